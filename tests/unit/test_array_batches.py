"""Array batches in the embedded broker: numpy arrays and (buffer, offsets) pairs in, numpy
views of the delivery frame out, uint64 receipts arrays to ack_batch."""

from __future__ import annotations

import array

import numpy as np
import pytest

import fastfanout
from fastfanout import InvalidArgument, PublishEntry, StaleReceipt
from fastfanout._ext.wire import encode_entries, pack_receipts

ROWS = np.arange(24, dtype=np.uint8).reshape(4, 6)
RECORD = np.dtype([("x", "<f4"), ("n", "<i4")])


def make_broker() -> fastfanout.Broker:
    broker = fastfanout.Broker()
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    return broker


def bodies(broker: fastfanout.Broker) -> list[bytes]:
    return [m.body for m in broker.receive("q", max_messages=100)]


@pytest.mark.parametrize("entries, expected", [
    (ROWS, [bytes(row) for row in ROWS]),
    (ROWS[::2], [bytes(ROWS[0]), bytes(ROWS[2])]),                    # strided rows
    (np.arange(8, dtype=np.float32).reshape(2, 4),
     [np.arange(4, dtype=np.float32).tobytes(), np.arange(4, 8, dtype=np.float32).tobytes()]),
    (np.array([(1.5, 7), (2.5, 8)], dtype=RECORD),
     [np.array([(1.5, 7)], RECORD).tobytes(), np.array([(2.5, 8)], RECORD).tobytes()]),
    ((b"helloworld!", np.array([0, 5, 10, 11])), [b"hello", b"world", b"!"]),
    ((bytearray(b"abcd"), np.array([0, 0, 4], dtype=np.uint32)), [b"", b"abcd"]),
    ((memoryview(b"xyz"), array.array("q", [1, 3])), [b"yz"]),
    (np.zeros((0, 4), dtype=np.uint8), []),
])
def test_publish_and_send_batch_take_array_batches(entries: object, expected: list[bytes]
                                                    ) -> None:
    with make_broker() as broker:
        assert len(broker.publish_batch("t", entries)) == len(expected)
        assert bodies(broker) == expected
        assert len(broker.send_batch("q", entries)) == len(expected)
        assert bodies(broker) == expected


def test_an_array_batch_encodes_as_its_rows_would() -> None:
    assert encode_entries(ROWS) == encode_entries([bytes(row) for row in ROWS])
    pair = (b"abcdef", np.array([0, 2, 6]))
    assert encode_entries(pair) == encode_entries([b"ab", b"cdef"])


def test_entries_keep_their_zero_bytes_beside_the_array_path() -> None:
    # extend() reads array rows through C pointers; a PublishEntry's body must stay bytes
    from fastfanout.wire import protocol

    entries = [PublishEntry(b"\x00"), PublishEntry(b"a\x00b", priority=1), b"\x00\x00"]
    frame = encode_entries(entries)
    assert [r.body for r in protocol.codec_module().decode_batch(frame)] == [
        b"\x00", b"a\x00b", b"\x00\x00"]


@pytest.mark.parametrize("entries, message", [
    (np.zeros((3, 4), dtype=np.float32, order="F"), "rows must each be C-contiguous"),
    (np.zeros((3, 4, 2), dtype=np.uint8)[:, ::2], "rows must each be C-contiguous"),
    ((b"abcdef", np.array([0, 4, 2])), "offsets must not decrease"),
    ((b"abcdef", np.array([0, 7])), "beyond the buffer's 6 bytes"),
    ((b"abcdef", np.array([-1, 2])), r"offsets\[0\]=-1 must be >= 0"),
    ((b"abcdef", np.array([], dtype=np.int64)), "needs n \\+ 1 offsets"),
    ((np.zeros(8, np.uint8)[::2], np.array([0, 2])), "must be C-contiguous"),
    ((5, np.array([0, 1])), "needs a buffer first"),
    ((b"abcdef", np.array([0, 3, 6], dtype=np.int16)), "1-D of 2-byte items"),
    # float offsets were published as a second body (the offsets' own bytes)
    ((b"abcdef", np.array([0.0, 3.0, 6.0])), "integers in native byte order; .* 'd'"),
    ((b"abcdef", np.array([0.0, 6.0], dtype=np.float32)), "4- or 8-byte integers"),
    ((b"abcdef", np.array([[0, 3], [4, 6]])), "2-D of 8-byte items"),
    ((b"abcdef", np.array([0, 3, 6], dtype=">i8")), "native byte order; .* format '>q'"),
    ((b"abcdef", np.array([0, 2**63 + 5], dtype=np.uint64)),
     r"offsets\[1\]=9223372036854775813 is beyond the buffer's 6 bytes"),
    (np.array(5, dtype=np.uint8), "this 0-d ndarray has none"),
    (np.array((1.5, 7), dtype=RECORD), "this 0-d ndarray has none"),
    (np.array([[b"ab", b"cd"]], dtype=object), "an array batch must hold plain data"),
    (np.array([(1, b"x")], dtype=[("n", "<i4"), ("o", "O")]), "must hold plain data"),
    ((np.array([b"ab"], dtype=object), np.array([0, 8])),
     "the buffer of a .* must hold plain data"),
])
def test_a_bad_array_batch_is_refused_and_changes_nothing(entries: object, message: str
                                                          ) -> None:
    with make_broker() as broker:
        with pytest.raises(InvalidArgument, match=message):
            broker.publish_batch("t", entries)
        with pytest.raises(InvalidArgument, match=message):
            encode_entries(entries)
        assert broker.stats().queues["q"].enqueued == 0


@pytest.mark.parametrize("body", [
    np.array([b"ab", b"cd"], dtype=object),
    np.array([(1, b"x")], dtype=[("n", "<i4"), ("o", "O")]),
    memoryview(np.array([b"ab"], dtype=object)),
])
def test_a_body_of_python_objects_is_refused_not_sent_as_pointers(body: object) -> None:
    # its bytes were the objects' addresses: meaningless to any consumer, and a leak of
    # this process's memory layout
    with make_broker() as broker:
        for publish in (lambda: broker.send("q", body),
                        lambda: broker.publish_batch("t", [body]),
                        lambda: broker.send_batch("q", [PublishEntry(body, priority=1)]),
                        lambda: encode_entries([body])):
            with pytest.raises(InvalidArgument, match="a body must hold plain data"):
                publish()
        assert broker.stats().queues["q"].enqueued == 0
        broker.send("q", np.array([1, 2], dtype=[("n", "<i4")]))   # a field named O is fine
        broker.send("q", np.zeros(2, dtype=[("O", "<i4")]))
        assert len(bodies(broker)) == 2


def test_a_batch_of_fixed_size_bodies_is_viewed_in_place() -> None:
    data = np.arange(5 * 256, dtype=np.float32).reshape(5, 256)
    with make_broker() as broker:
        ids = broker.publish_batch("t", data).message_ids
        consumer = broker.consume("q", prefetch=100)
        batch = consumer.next_batch(1.0)
        assert batch is not None and len(batch) == 5
        assert batch.ids.tolist() == ids and batch.ids.dtype == np.uint64
        assert batch.receive_counts.tolist() == [1] * 5
        assert batch.receipts.dtype == np.uint64
        assert batch.lengths.tolist() == [1024] * 5
        frame = batch.bodies
        assert [bytes(frame[o:o + n]) for o, n in zip(batch.offsets, batch.lengths,
                                                       strict=True)] == [r.tobytes()
                                                                         for r in data]
        table = batch.as_array(np.float32)
        assert table.shape == (5, 256) and (table == data).all()
        assert np.shares_memory(table, np.frombuffer(batch.frame, np.uint8))   # a view
        assert not table.flags.writeable
        assert batch.as_array("<f4", (16, 16)).shape == (5, 16, 16)
        assert [m.body for m in batch] == [r.tobytes() for r in data]
        assert bytes(batch.body(-1)) == data[-1].tobytes()
        batch.ack()
        assert broker.stats().queues["q"].acked == 5
        consumer.cancel()


def test_as_array_refuses_bodies_of_other_sizes() -> None:
    with make_broker() as broker:
        broker.publish_batch("t", [b"abcd", b"abcdefgh"])
        batch = broker.consume("q").next_batch(1.0)
        assert batch is not None
        with pytest.raises(InvalidArgument, match=r"bodies of one size; .* from 4 to 8 bytes"):
            batch.as_array(np.uint8)
        assert batch.lengths.tolist() == [4, 8]
        assert batch.body_list() == [b"abcd", b"abcdefgh"]
        with pytest.raises(InvalidArgument, match="not a whole number"):
            make_batch_of(broker, [b"abc"]).as_array(np.float32)
        with pytest.raises(InvalidArgument, match=r"shape \(2,\)"):
            make_batch_of(broker, [b"abcd"]).as_array(np.float32, (2,))


def test_as_array_refuses_text_dtypes() -> None:
    # "U1" over bytes that are no UCS-4 code point raised numpy's own SystemError
    with make_broker() as broker:
        broker.send_batch("q", np.full((2, 16), 0xFF, dtype=np.uint8))
        batch = broker.consume("q", prefetch=10).next_batch(1.0)
        assert batch is not None
        for dtype in ("U1", np.dtype([("n", "<i4"), ("t", "<U3")]), np.dtype(("U1", (2,)))):
            with pytest.raises(InvalidArgument, match="holds text"):
                batch.as_array(dtype)
        assert batch.as_array("S4").shape == (2, 4)


def test_as_array_refuses_object_dtypes_and_takes_numpy_int_shapes() -> None:
    # a view of the frame as object pointers crashed the interpreter on first use
    with make_broker() as broker:
        broker.send_batch("q", np.full((2, 16), 0x41, dtype=np.uint8))
        uniform = broker.consume("q", prefetch=10).next_batch(1.0)
        broker.send_batch("q", [PublishEntry(b"A" * 16, attributes={"k": "v"}), b"A" * 16])
        gathered = broker.consume("q", prefetch=10).next_batch(1.0)
        assert uniform is not None and gathered is not None
        for batch in (uniform, gathered):
            for dtype in (object, np.dtype([("n", "<i8"), ("o", "O")])):
                with pytest.raises(InvalidArgument, match="holds Python objects"):
                    batch.as_array(dtype)
            with pytest.raises(InvalidArgument, match="not a numpy dtype"):
                batch.as_array("no-such-type")
            with pytest.raises(InvalidArgument, match="must be an int or a tuple of ints"):
                batch.as_array(np.uint8, "16")
            with pytest.raises(InvalidArgument, match="negative dimension"):
                batch.as_array(np.uint8, (-4, -4))
            assert batch.as_array(np.uint16, np.int64(8)).shape == (2, 8)
            assert batch.as_array(np.uint8, (np.int32(2), np.int64(8))).shape == (2, 2, 8)


def make_batch_of(broker: fastfanout.Broker, entries: list[bytes]) -> object:
    broker.send_batch("q", entries)
    batch = broker.consume("q").next_batch(1.0)
    assert batch is not None
    return batch


def test_records_of_varying_layout_get_gathered_columns() -> None:
    with make_broker() as broker:
        results = broker.send_batch("q", [
            PublishEntry(b"\x01\x00\x00\x00", attributes={"k": "v"}),
            b"\x02\x00\x00\x00",
            PublishEntry(b"\x03\x00\x00\x00", group_id="a-longer-group")])
        batch = broker.consume("q").next_batch(1.0)
        assert batch is not None
        assert batch.ids.tolist() == results.message_ids
        assert batch.as_array(np.int32).ravel().tolist() == [1, 2, 3]   # a copy
        assert batch.body_list() == [b"\x01\x00\x00\x00", b"\x02\x00\x00\x00",
                                     b"\x03\x00\x00\x00"]
        assert batch[0].attributes == {"k": "v"}
        broker.ack_batch(batch.receipts)
        assert broker.stats().queues["q"].acked == 3


def test_a_batch_ack_skips_messages_settled_on_their_own() -> None:
    with make_broker() as broker:
        broker.send_batch("q", ROWS)
        batch = broker.consume("q", prefetch=10).next_batch(1.0)
        assert batch is not None
        batch[1].nack(delay=0.0)
        batch.ack()
        stats = broker.stats().queues["q"]
        assert (stats.acked, stats.visible) == (3, 1)


@pytest.mark.parametrize("entries", [ROWS, (b"abcdefghij", np.array([0, 1, 3, 6, 10]))])
def test_a_batch_ack_after_its_views_settles_every_message(entries) -> None:
    # Once the frame's layout is read (a view made), a batch ack gathers the receipts
    # from it when every record is alike, and decodes the frame otherwise.
    with make_broker() as broker:
        broker.send_batch("q", entries)
        batch = broker.consume("q", prefetch=10).next_batch(1.0)
        assert batch is not None and len(batch) == 4
        assert len(batch.offsets) == 4
        receipts = batch.receipts.tolist()
        batch.ack()
        stats = broker.stats().queues["q"]
        assert (stats.acked, stats.visible, stats.leased) == (4, 0, 0)
        with pytest.raises(StaleReceipt):
            broker.ack(receipts[0])


def test_ack_batch_takes_a_uint64_array_all_or_none() -> None:
    with make_broker() as broker:
        broker.send_batch("q", ROWS)
        receipts = np.array([m.receipt for m in broker.receive("q", max_messages=4)],
                            dtype=np.uint64)
        with pytest.raises(InvalidArgument, match="must be >= 0"):
            broker.ack_batch(np.array([int(receipts[0]), -1], dtype=np.int64))
        with pytest.raises(StaleReceipt):
            broker.ack_batch(np.append(receipts, np.uint64(999_999)))
        with pytest.raises(InvalidArgument, match="1-D array of integers"):
            broker.ack_batch(receipts.astype(np.float64))
        for other in (receipts.astype(">u8"), np.array([1, 2], dtype=np.uint16)):
            with pytest.raises(InvalidArgument, match="4- or 8-byte integers in native "):
                broker.ack_batch(other)
        assert broker.stats().queues["q"].acked == 0
        broker.ack_batch(receipts[::2])          # strided: read as it is
        broker.ack_batch(receipts[1::2].astype(np.int64))
        assert broker.stats().queues["q"].acked == 4


def test_pack_receipts_reads_arrays_and_ints_alike() -> None:
    packed = pack_receipts([1, 2**64 - 1])
    assert pack_receipts(np.array([1, 2**64 - 1], dtype=np.uint64)) == packed
    assert pack_receipts(np.array([1, 2], dtype=np.int32)) == pack_receipts([1, 2])
    for bad in ([-1], [2**64], ["1"]):
        with pytest.raises(InvalidArgument):
            pack_receipts(bad)
    with pytest.raises(InvalidArgument, match="iterable of ints or a uint64 array"):
        pack_receipts(5)


def test_the_embedded_producer_offers_array_batches_in_order() -> None:
    with make_broker() as broker:
        with broker.producer("t") as producer:
            producer.offer(b"first")
            results = producer.offer_batch((b"abcdef", np.array([0, 3, 6])))
            assert len(results) == 2 and producer.pending == 0
            producer.offer_batch(ROWS[:1])
            with pytest.raises(InvalidArgument, match="offsets must not decrease"):
                producer.offer_batch((b"ab", np.array([1, 0])))
            with pytest.raises(InvalidArgument, match="takes an array batch"):
                producer.offer_batch([b"x"])
            # what is no array batch is refused, as the clients' producers refuse it
            # (a 1-D array of a plain item type was published an element a body)
            for not_rows in (np.arange(3, dtype=np.uint8), (b"a", b"b"), iter([b"x"])):
                with pytest.raises(InvalidArgument, match="must be a 2-D or structured"):
                    producer.offer_batch(not_rows)
            assert producer.offered == 4
        assert bodies(broker) == [b"first", b"abc", b"def", bytes(ROWS[0])]


def test_a_blob_takes_its_bytes_rounded_to_its_slab_class() -> None:
    # the slab hands out 8-byte steps up to 256 bytes and 16-byte steps up to 1024, with
    # no header of its own: a 64-byte body and the 32-byte header take 96 bytes (malloc
    # took a 112-byte chunk for the 40-byte header of before), 120 with the 24-byte
    # journal part of a durable broker's message; bigger blobs ask malloc for a whole
    # glibc chunk (16 k bytes holding 16 k - 8)
    from fastfanout._ext.blobs import BLOB_SLAB_MAX, blob_bytes

    assert blob_bytes(64) == 96 and blob_bytes(64, journaled=True) == 120
    assert blob_bytes(0) == 32 and blob_bytes(16) == 48 and blob_bytes(17) == 56
    assert blob_bytes(224) == 256 and blob_bytes(225) == 272 and blob_bytes(992) == 1024
    assert all(blob_bytes(n) % 8 == 0 and 32 + n <= blob_bytes(n) < 32 + n + 8
               for n in range(0, 225))
    assert all(blob_bytes(n) % 16 == 0 and 32 + n <= blob_bytes(n) < 32 + n + 16
               for n in range(225, BLOB_SLAB_MAX - 32 + 1))
    assert all((blob_bytes(n) - 8) % 16 == 0 and blob_bytes(n) >= 32 + n
               for n in range(BLOB_SLAB_MAX - 31, 3000, 7))


def test_a_pair_whose_second_item_holds_bytes_is_two_bodies() -> None:
    with make_broker() as broker:
        pair = (np.zeros(3, np.uint8), np.ones(2, np.uint8))
        assert len(broker.publish_batch("t", pair)) == 2
        assert [m.body for m in broker.receive("q", max_messages=10)] == [
            b"\x00" * 3, b"\x01" * 2]
