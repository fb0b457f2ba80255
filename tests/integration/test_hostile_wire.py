"""A peer that does not follow the protocol: the broker answers it and serves the rest.

Raw DEALER sockets send what no Python client would (reused request ids, frames of the
wrong form); each case checks the typed answer, that nothing already accepted was lost,
and that the store's invariants still hold (``check``).
"""

from __future__ import annotations

from typing import Any as Tracker

import msgspec
import pytest
import zmq
from conftest import raw_dealer

from fastfanout._ext import codec
from fastfanout._ext.receipts import STALE_RECEIPTS_LISTED
from fastfanout.errors import StaleReceipt
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status


def request(dealer: zmq.Socket[bytes], opcode: int, request_id: int,
            *payload: bytes) -> None:
    dealer.send_multipart([protocol.encode_header(opcode, request_id), *payload])


def answer(dealer: zmq.Socket[bytes]) -> tuple[int, int, list[bytes]]:
    """The next message from the broker: (status, request id, payload frames)."""
    assert dealer.poll(5000), "no answer from the broker"
    header, *payload = dealer.recv_multipart()
    _, status, request_id = protocol.decode_header(header)
    return status, request_id, payload


def call(*args: object, **kwargs: object) -> bytes:
    return msgspec.msgpack.encode([list(args), kwargs])


def test_a_consume_reusing_an_open_consumers_id_is_refused(track: Tracker) -> None:
    # until 2026-12-05 the second CONSUME took the first one's place unseen (its pushes
    # stopped), and the first one's owner tag was never freed, nor its session's
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("first")
    client.create_queue("second")
    with raw_dealer(server.endpoint) as dealer:
        request(dealer, Opcode.CONSUME, 7, call(queue="first", prefetch=1))
        assert answer(dealer)[:2] == (Status.OK, 7)
        request(dealer, Opcode.CONSUME, 7, call(queue="second", prefetch=1))
        status, request_id, payload = answer(dealer)
        assert (status, request_id) == (Status.ERROR, 7)
        assert msgspec.msgpack.decode(payload[0])[0] == "invalid_argument"
        client.send("second", b"not for consumer 7")
        for body in (b"one", b"two"):
            client.send("first", body)
            status, request_id, payload = answer(dealer)
            assert (status, request_id) == (Status.PUSH, 7)
            [record] = codec.decode_batch(payload[0])
            assert record.body == body
            request(dealer, Opcode.ACK, 100, protocol.encode_receipt(record.receipt))
            assert answer(dealer)[:2] == (Status.OK, 100)
        request(dealer, Opcode.CANCEL, 101, call(7))
        assert answer(dealer)[:2] == (Status.OK, 101)
        request(dealer, Opcode.CANCEL, 102, call(7))   # the one consumer 7 is gone
        assert answer(dealer)[:2] == (Status.ERROR, 102)
    assert client.server_stats()["consumers"] == 0
    assert client.stats().queues["second"].visible == 1
    assert client.check()


def test_a_publish_frame_with_more_records_than_its_count_is_refused_whole(
        track: Tracker) -> None:
    # until 2026-12-05 the broker read `count` records and ignored the rest of the frame:
    # a second record after a count of 1 was dropped unseen, the publish answered OK
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    two = bytearray(codec.encode_batch([codec.Record(b"first"), codec.Record(b"second")]))
    two[4:8] = (1).to_bytes(4, "little")
    empty_and_more = codec.encode_batch([]) + bytes(8)
    with raw_dealer(server.endpoint) as dealer:
        for request_id, (opcode, name, frame) in enumerate(
                [(Opcode.PUBLISH, b"t", bytes(two)), (Opcode.SEND, b"q", bytes(two)),
                 (Opcode.PUBLISH, b"t", empty_and_more)], 1):
            request(dealer, opcode, request_id, name, frame)
            status, answered, payload = answer(dealer)
            assert (status, answered) == (Status.ERROR, request_id)
            assert msgspec.msgpack.decode(payload[0])[0] == "malformed_frame"
    assert client.stats().queues["q"].enqueued == 0
    assert client.publish("t", b"still served").deliveries == 1
    assert client.check()


def test_extending_one_lease_again_and_again_holds_it_once(track: Tracker) -> None:
    # until 2026-12-05 the broker kept each EXTEND_BATCH's whole receipts frame until
    # the extension ended: frames naming one lease millions of times, 43,200 s each,
    # grew it by the frame's size a request (eight 32 MiB frames: 256 MiB held for 12 hours)
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send("q", b"leased")
    with raw_dealer(server.endpoint) as dealer:
        request(dealer, Opcode.RECEIVE, 1, call(queue="q"))
        status, _, payload = answer(dealer)
        [record] = codec.decode_batch(payload[0])
        assert status == Status.OK
        many = protocol.encode_receipt(record.receipt) * 100_000
        for request_id in range(2, 6):
            request(dealer, Opcode.EXTEND_BATCH, request_id, many,
                    msgspec.msgpack.encode(43_200))
            assert answer(dealer)[:2] == (Status.OK, request_id)
            request(dealer, Opcode.EXTEND, 100 + request_id, call(record.receipt, 43_200))
            assert answer(dealer)[:2] == (Status.OK, 100 + request_id)
        assert client.server_stats()["held_receipts"] <= 2   # its delivery, its extension
        request(dealer, Opcode.BYE, 10)
        assert answer(dealer)[:2] == (Status.OK, 10)
    # the session's end gave the lease back at once, extended or not
    track.wait_until(lambda: client.stats().queues["q"].visible == 1, what="the release")
    assert client.check()


def test_a_frame_of_stale_receipts_gets_a_bounded_answer(track: Tracker) -> None:
    # until 2026-12-05 every stale receipt was listed: 8 million of them in one 64 MiB
    # ACK cost the broker ~800 MB (a dict of them, a 40 MB error reply) for one request
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send("q", b"kept")
    count = STALE_RECEIPTS_LISTED * 2
    stale = b"".join(protocol.encode_receipt(receipt) for receipt in range(1, count + 1))
    with raw_dealer(server.endpoint) as dealer:
        for request_id, (opcode, payload) in enumerate(
                [(Opcode.ACK, [stale]), (Opcode.TERM_BATCH, [stale]),
                 (Opcode.NACK_BATCH, [stale, protocol.NO_DELAY]),
                 (Opcode.SETTLE, [stale, stale, protocol.SETTLE_EACH])], 1):
            request(dealer, opcode, request_id, *payload)
            status, answered, frames = answer(dealer)
            assert (status, answered) == (Status.ERROR, request_id)
            code, message, receipts = msgspec.msgpack.decode(frames[0])
            assert code == "stale_receipt"
            assert receipts == list(range(1, STALE_RECEIPTS_LISTED + 1)), opcode
            if opcode != Opcode.SETTLE:
                assert f"{count} of {count} receipts are stale" in message
    with pytest.raises(StaleReceipt) as caught:   # the embedded broker's the same
        server.broker.ack_batch(list(range(1, count + 1)))
    assert len(caught.value.receipts) == STALE_RECEIPTS_LISTED
    assert client.stats().queues["q"].visible == 1
    assert client.check()


def test_receive_and_consume_refuse_names_they_do_not_take(track: Tracker) -> None:
    # until 2026-12-05 an unknown name was ignored: a foreign client's typo
    # (`max_mesages`, `prefech`) silently got the default, one message or 100
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send_batch("q", [b"a", b"b", b"c"])
    cases = [(Opcode.RECEIVE, call(queue="q", max_mesages=3)),
             (Opcode.RECEIVE, call("q", "q")),
             (Opcode.RECEIVE, call("q", queue="q")),
             (Opcode.CONSUME, call(queue="q", prefech=3))]
    with raw_dealer(server.endpoint) as dealer:
        for request_id, (opcode, payload) in enumerate(cases, 1):
            request(dealer, opcode, request_id, payload)
            status, answered, frames = answer(dealer)
            assert (status, answered) == (Status.ERROR, request_id)
            assert msgspec.msgpack.decode(frames[0])[0] == "invalid_argument"
        request(dealer, Opcode.RECEIVE, 10, call("q", max_messages=3))
        status, _, frames = answer(dealer)
        assert status == Status.OK and len(codec.decode_batch(frames[0])) == 3
    assert client.server_stats()["consumers"] == 0
