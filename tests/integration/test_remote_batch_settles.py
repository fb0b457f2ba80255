"""nack_batch, extend_batch and term_batch through a server, for the blocking ``Client``
and the asyncio ``AsyncClient`` (one driver interface, as the consumer tests use), and
their wire requests (NACK_BATCH, EXTEND_BATCH, TERM_BATCH) sent raw."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest
from conftest import DEADLINE, Tracker, raw_dealer
from test_consumer_credit import DRIVERS

from fastfanout import InvalidArgument, StaleReceipt
from fastfanout._ext.wire import receipts_of
from fastfanout.wire import protocol


def counts(driver: Any, queue: str = "q") -> tuple[int, int, int, int]:
    stats = driver.call("stats").queues[queue]
    return stats.visible, stats.leased, stats.delayed, stats.acked


def leased(driver: Any, count: int, **settings: Any) -> list[int]:
    driver.call("create_queue", "dlq")
    driver.call("create_queue", "q", visibility_timeout=60.0, dead_letter_queue="dlq",
                **settings)
    driver.call("send_batch", "q", [b"m%d" % index for index in range(count)])
    return [m.receipt for m in driver.call("receive", "q", max_messages=count)]


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_each_batch_form_settles_every_receipt_as_its_single_form(
        track: Tracker, endpoint: str, kind: str) -> None:
    """Over ipc (a local channel: the frames are views of its ring) and tcp."""
    server = track.server(endpoint)
    driver = DRIVERS[kind](track, server.endpoint)
    receipts = leased(driver, 8)
    driver.call("nack_batch", receipts[:2], delay=30.0)
    assert counts(driver) == (0, 6, 2, 0)
    driver.call("nack_batch", receipts[2:4])          # no backoff: visible at once
    assert counts(driver) == (2, 4, 2, 0)
    driver.call("extend_batch", receipts[4:6], 0)     # as nack(delay=0)
    assert counts(driver) == (4, 2, 2, 0)
    driver.call("term_batch", receipts[6:])
    assert counts(driver) == (4, 0, 2, 0)
    dead = driver.call("receive", "dlq", max_messages=10)
    assert sorted(m.body for m in dead) == [b"m6", b"m7"]
    assert {m.dead_letter.reason for m in dead} == {"rejected"}
    again = driver.call("receive", "q", max_messages=10, visibility_timeout=1.0)
    assert len(again) == 4 and {m.receive_count for m in again} == {2}
    fresh = [m.receipt for m in again]
    driver.call("extend_batch", np.array(fresh, dtype=np.uint64), 120.0)
    driver.call("ack_batch", fresh)                   # extended: still valid
    assert counts(driver)[3] == 4
    driver.close()


@pytest.mark.parametrize("operation", ["nack_batch", "extend_batch", "term_batch"])
@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_a_batch_with_one_stale_receipt_settles_nothing(
        track: Tracker, kind: str, operation: str) -> None:
    """As ``ack_batch``: StaleReceipt lists each stale receipt once, in order, and no
    receipt of the batch was settled."""
    server = track.server()
    driver = DRIVERS[kind](track, server.endpoint)
    receipts = leased(driver, 3)
    driver.call("ack", receipts[1])
    batch = [receipts[0], receipts[1], receipts[2], receipts[1]]
    arguments = {"extend_batch": (0,)}.get(operation, ())
    with pytest.raises(StaleReceipt) as raised:
        driver.call(operation, batch, *arguments)
    assert raised.value.receipts == [receipts[1]]
    assert counts(driver) == (0, 2, 0, 1)
    assert counts(driver, "dlq") == (0, 0, 0, 0)
    driver.call(operation, [receipts[0], receipts[2]], *arguments)   # they still can
    assert counts(driver)[1] == 0
    driver.close()


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_bad_arguments_raise_invalid_argument_and_change_nothing(
        track: Tracker, kind: str) -> None:
    server = track.server()
    driver = DRIVERS[kind](track, server.endpoint)
    receipts = leased(driver, 2)
    for operation, args, kwargs in [
            ("nack_batch", (receipts,), {"delay": -1.0}),
            ("nack_batch", (receipts,), {"delay": "soon"}),
            ("nack_batch", (receipts,), {"delay": 31_536_001}),
            ("extend_batch", (receipts, 43_201.0), {}),
            ("extend_batch", (receipts, float("nan")), {}),
            ("extend_batch", (receipts, None), {}),
            ("nack_batch", ([*receipts, -1],), {}),
            ("extend_batch", ([*receipts, "x"], 5.0), {}),
            ("term_batch", ([*receipts, True],), {}),
            ("term_batch", (7,), {}),
            ("term_batch", (np.array(receipts, dtype=np.float64),), {})]:
        with pytest.raises(InvalidArgument):
            driver.call(operation, *args, **kwargs)
    assert counts(driver) == (0, 2, 0, 0)
    driver.close()


@pytest.mark.parametrize("kind", sorted(DRIVERS))
def test_a_batch_settle_goes_after_the_queued_acks(track: Tracker, kind: str) -> None:
    """A consumer's pipelined ``message.ack()`` is sent before a later ``nack_batch`` of
    the same receipts (as before ``nack``): the ack wins, the nack finds them stale."""
    server = track.server()
    driver = DRIVERS[kind](track, server.endpoint)
    driver.call("create_queue", "q", visibility_timeout=60.0)
    driver.call("send", "q", b"a")
    driver.consume("q", 10)
    (message,) = driver.next_messages(DEADLINE)

    async def in_the_loop() -> None:
        message.ack()                              # queued for this iteration's SETTLE
        await driver.client.nack_batch([message.receipt], delay=0)

    with pytest.raises(StaleReceipt):
        if kind == "asyncio":
            driver.run(in_the_loop())
        else:
            message.ack()                          # queued, not yet sent
            driver.call("nack_batch", [message.receipt], delay=0)
    assert driver.call("stats").queues["q"].acked == 1
    driver.close()


class Dealer:
    """A raw DEALER that keeps its last reply's frames."""

    def __init__(self, socket: Any) -> None:
        self.socket = socket
        self.last_reply: list[bytes] = []


def _raw(dealer: Dealer, request_id: int, opcode: int, *payload: bytes) -> tuple[int, Any]:
    dealer.socket.send_multipart([protocol.encode_header(opcode, request_id), *payload])
    assert dealer.socket.poll(int(DEADLINE * 1000)), "no answer"
    reply = dealer.last_reply = dealer.socket.recv_multipart()
    _, status, answered = protocol.decode_header(reply[0])
    assert answered == request_id
    if len(reply) == 1 or (opcode == protocol.Opcode.RECEIVE and status == protocol.Status.OK):
        return status, None   # (a RECEIVE's record batch: in ``last_reply``)
    return status, msgspec.msgpack.decode(reply[1])


def test_the_wire_requests_and_their_malformed_forms(track: Tracker) -> None:
    server = track.server(local_channels=False)
    broker = server.broker
    broker.create_queue("q", visibility_timeout=60.0)
    broker.send_batch("q", [b"a", b"b", b"c"])
    with raw_dealer(server.endpoint) as socket:
        dealer = Dealer(socket)
        _raw(dealer, 1, protocol.Opcode.HELLO)
        status, payload = _raw(dealer, 2, protocol.Opcode.RECEIVE, msgspec.msgpack.encode(
            [[], {"queue": "q", "max_messages": 3}]))
        assert status == protocol.Status.OK
        packed = receipts_of(dealer.last_reply[1])
        first, second, third = (packed[index:index + 8] for index in (0, 8, 16))
        assert _raw(dealer, 3, protocol.Opcode.EXTEND_BATCH, first + second,
                    msgspec.msgpack.encode(120.0)) == (protocol.Status.OK, None)
        assert _raw(dealer, 4, protocol.Opcode.NACK_BATCH, first,
                    msgspec.msgpack.encode(None)) == (protocol.Status.OK, None)
        assert _raw(dealer, 5, protocol.Opcode.TERM_BATCH, second) == (protocol.Status.OK,
                                                                       None)
        assert broker.stats().queues["q"].leased == 1
        status, payload = _raw(dealer, 6, protocol.Opcode.NACK_BATCH, third + first,
                               msgspec.msgpack.encode(0))
        assert (status, payload[0]) == (protocol.Status.ERROR, "stale_receipt")
        assert payload[2] == protocol.decode_receipts(first)
        refused = [
            (protocol.Opcode.NACK_BATCH, [b"abc", msgspec.msgpack.encode(None)],
             "malformed_frame"),
            (protocol.Opcode.NACK_BATCH, [protocol.encode_receipts([1])], "malformed_frame"),
            (protocol.Opcode.EXTEND_BATCH, [protocol.encode_receipts([1]), b"\xc1"],
             "malformed_frame"),
            (protocol.Opcode.EXTEND_BATCH, [protocol.encode_receipts([1]),
                                            msgspec.msgpack.encode("5")], "invalid_argument"),
            (protocol.Opcode.NACK_BATCH, [protocol.encode_receipts([1]),
                                          msgspec.msgpack.encode(-1)], "invalid_argument"),
            (protocol.Opcode.TERM_BATCH, [], "malformed_frame"),
            (protocol.Opcode.TERM_BATCH, [protocol.encode_receipts([2**64 - 1])],
             "stale_receipt"),
        ]
        for request_id, (opcode, payload_frames, code) in enumerate(refused, 10):
            status, payload = _raw(dealer, request_id, opcode, *payload_frames)
            assert (status, payload[0]) == (protocol.Status.ERROR, code), (opcode, code)
        assert broker.stats().queues["q"].leased == 1    # the third: refused with first


def test_a_blocking_clients_batch_nacks_and_terms(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("dlq")
    client.create_queue("q", visibility_timeout=60.0, dead_letter_queue="dlq")
    client.send_batch("q", [b"a", b"b", b"c", b"d"])
    consumer = client.consume("q", prefetch=2)
    batch = consumer.next_batch(DEADLINE)
    assert batch is not None and len(batch) == 2
    batch[0].ack()                                   # queued; goes before the nack
    with pytest.raises(InvalidArgument):
        batch.nack(delay=float("inf"))               # checked first, nothing sent
    batch.nack(delay=30.0)
    stats = client.stats().queues["q"]
    assert (stats.acked, stats.delayed) == (1, 1)
    termed = 0
    while termed < 2:                                # the credit came back: c and d
        batch = consumer.next_batch(DEADLINE)
        assert batch is not None, "no push after the batch's nack"
        batch.term()
        termed += len(batch)
    assert client.stats().queues["dlq"].visible == 2
    client.send("q", b"e")
    batch = consumer.next_batch(DEADLINE)
    assert batch is not None and len(batch) == 1
    client.ack_batch(batch.receipts)
    with pytest.raises(StaleReceipt):
        batch.term()                                 # waits and raises, as client.term
    consumer.cancel()


def test_an_asyncio_clients_batch_nacks_and_terms(track: Tracker) -> None:
    server = track.server()
    driver = DRIVERS["asyncio"](track, server.endpoint)
    client = driver.client

    async def main() -> None:
        await client.create_queue("dlq")
        await client.create_queue("q", visibility_timeout=60.0, dead_letter_queue="dlq")
        await client.send_batch("q", [b"a", b"b", b"c", b"d"])
        batches = client.consume_batches("q", prefetch=2, timeout=DEADLINE)
        batch = await anext(batches)
        assert len(batch) == 2
        batch[0].ack()                               # queued; goes before the nack
        with pytest.raises(InvalidArgument):
            batch.nack(delay=-1.0)
        await batch.nack(delay=30.0)
        termed = 0
        while termed < 2:                            # the credit came back: c and d
            batch = await anext(batches)
            await batch.term()
            termed += len(batch)
        stats = await client.stats()
        assert (stats.queues["q"].acked, stats.queues["q"].delayed) == (1, 1)
        assert (stats.queues["dlq"].visible, stats.queues["q"].leased) == (2, 0)
        await batches.aclose()

    driver.run(main())
    driver.close()
