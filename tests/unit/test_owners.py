"""Owner tags: the store's count of each owner's leases, push credit, session-bound settles.

The server gives each session and each push consumer an owner tag
(``ServerPort.open_owner``, the broker's internal port: ``Broker.server_port()``);
these tests drive the same calls on an embedded broker and a fake clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

import pytest

from fastfanout import Broker, InvalidArgument, StaleReceipt
from fastfanout.wire.protocol import encode_receipts


def push(broker: Broker, owner: int, max_messages: int = 100,
         visibility_timeout: float | None = None, queue: str = "q") -> list[int]:
    """The server's push for ``owner``: the receipts it leased."""
    port = broker.server_port()
    _, count, packed, _, _ = port.receive_push(queue, max_messages, visibility_timeout, None,
                                               b"", owner=owner)
    return list(struct.unpack(f"<{count}Q", packed))


def consumer_of(broker: Broker, prefetch: int) -> tuple[int, int]:
    """(session tag, consumer tag with ``prefetch``)."""
    port = broker.server_port()
    session = port.open_owner()
    return session, port.open_owner(session, prefetch)


def test_a_push_leases_at_most_the_consumers_prefetch(broker: Broker) -> None:
    port = broker.server_port()
    broker.create_queue("q")
    broker.send_batch("q", [b"m%d" % i for i in range(10)])
    session, consumer = consumer_of(broker, 3)
    assert len(push(broker, consumer, 2)) == 2
    assert len(push(broker, consumer)) == 1           # its prefetch is reached
    assert push(broker, consumer) == []               # nothing more, ever, until settled
    assert port.outstanding(consumer) == 3 and port.outstanding(session) == 0
    assert len(push(broker, session)) == 7            # a session's own receives: no limit
    assert port.outstanding(session) == 7


def _ack(broker: Broker, receipt: int, session: int) -> None:
    broker.ack(receipt, session=session)


def _ack_batch(broker: Broker, receipt: int, session: int) -> None:
    broker.ack_batch([receipt], session=session)


def _ack_packed(broker: Broker, receipt: int, session: int) -> None:
    port = broker.server_port()
    port.ack_packed(encode_receipts([receipt]), session=session)


def _ack_frames(broker: Broker, receipt: int, session: int) -> None:
    port = broker.server_port()
    assert port.ack_frames([encode_receipts([receipt])], session=session) == []


def _nack(broker: Broker, receipt: int, session: int) -> None:
    broker.nack(receipt, delay=60, session=session)


def _extend_to_zero(broker: Broker, receipt: int, session: int) -> None:
    broker.extend(receipt, 0, session=session)


def _term(broker: Broker, receipt: int, session: int) -> None:
    broker.term(receipt, session=session)


def _nack_batch(broker: Broker, receipt: int, session: int) -> None:
    broker.nack_batch([receipt], delay=60, session=session)


def _nack_packed(broker: Broker, receipt: int, session: int) -> None:
    broker.server_port().nack_packed(encode_receipts([receipt]), None, session=session)


def _extend_batch_to_zero(broker: Broker, receipt: int, session: int) -> None:
    broker.extend_batch([receipt], 0, session=session)


def _extend_packed_to_zero(broker: Broker, receipt: int, session: int) -> None:
    broker.server_port().extend_packed(encode_receipts([receipt]), 0, session=session)


def _term_batch(broker: Broker, receipt: int, session: int) -> None:
    broker.term_batch([receipt], session=session)


def _term_packed(broker: Broker, receipt: int, session: int) -> None:
    broker.server_port().term_packed(encode_receipts([receipt]), session=session)


def _release(broker: Broker, receipt: int, session: int) -> None:
    port = broker.server_port()
    assert port.release_packed(encode_receipts([receipt]), session=session) == 1


ENDINGS: dict[str, Callable[[Broker, int, int], None]] = {
    "ack": _ack, "ack_batch": _ack_batch, "ack_packed": _ack_packed,
    "ack_frames": _ack_frames, "nack": _nack, "extend_to_zero": _extend_to_zero,
    "term": _term, "release": _release, "nack_batch": _nack_batch,
    "nack_packed": _nack_packed, "extend_batch_to_zero": _extend_batch_to_zero,
    "extend_packed_to_zero": _extend_packed_to_zero, "term_batch": _term_batch,
    "term_packed": _term_packed,
}


@pytest.mark.parametrize("ending", sorted(ENDINGS))
def test_each_way_of_settling_gives_the_credit_back(broker: Broker, ending: str) -> None:
    port = broker.server_port()
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.send_batch("q", [b"a", b"b", b"c", b"d"])
    session, consumer = consumer_of(broker, 2)
    first, _ = push(broker, consumer)
    ENDINGS[ending](broker, first, session)
    assert port.outstanding(consumer) == 1
    assert len(push(broker, consumer)) == 1           # the credit came back
    assert port.outstanding(consumer) == 2


def test_a_lease_that_ends_by_itself_gives_the_credit_back(broker: Broker, clock) -> None:
    port = broker.server_port()
    broker.create_queue("q", visibility_timeout=5)
    broker.send_batch("q", [b"a", b"b", b"c"])
    _, consumer = consumer_of(broker, 2)
    assert len(push(broker, consumer)) == 2
    clock.advance(5)
    assert port.outstanding(consumer) == 0
    assert len(push(broker, consumer)) == 2           # c, then a (visible again)


@pytest.mark.parametrize("removal", ["purge", "delete_queue", "retention"])
def test_leases_removed_with_their_messages_give_the_credit_back(
        broker: Broker, clock, removal: str) -> None:
    port = broker.server_port()
    broker.create_queue("q", retention=60)
    broker.create_queue("other")
    broker.send_batch("q", [b"a", b"b"])
    broker.send("other", b"x")
    _, consumer = consumer_of(broker, 2)
    assert len(push(broker, consumer, visibility_timeout=600)) == 2
    if removal == "retention":
        clock.advance(60)
    else:
        getattr(broker, removal)("q")
    assert port.outstanding(consumer) == 0
    assert len(push(broker, consumer, queue="other")) == 1


def test_dead_lettering_at_max_receives_ends_no_lease_twice(broker: Broker, clock) -> None:
    port = broker.server_port()
    broker.create_queue("dlq")
    broker.create_queue("q", visibility_timeout=1, max_receive_count=1,
                        dead_letter_queue="dlq")
    broker.send("q", b"a")
    _, consumer = consumer_of(broker, 1)
    assert len(push(broker, consumer)) == 1
    clock.advance(1)                                  # the lease ends: credit back
    assert push(broker, consumer) == []               # dead-lettered on the way
    assert port.outstanding(consumer) == 0
    assert len(push(broker, consumer, queue="dlq")) == 1


def test_another_sessions_receipt_is_stale_and_changes_nothing(broker: Broker) -> None:
    port = broker.server_port()
    broker.create_queue("q")
    broker.send("q", b"a")
    first, consumer = consumer_of(broker, 5)
    other = port.open_owner()
    (receipt,) = push(broker, consumer)
    packed = encode_receipts([receipt])
    for call in (lambda: broker.ack(receipt, session=other),
                 lambda: broker.ack_batch([receipt], session=other),
                 lambda: port.ack_packed(packed, session=other),
                 lambda: broker.nack(receipt, session=other),
                 lambda: broker.extend(receipt, 0, session=other),
                 lambda: broker.extend(receipt, 30, session=other),
                 lambda: broker.term(receipt, session=other),
                 lambda: broker.nack_batch([receipt], session=other),
                 lambda: broker.extend_batch([receipt], 30, session=other),
                 lambda: broker.term_batch([receipt], session=other),
                 lambda: port.nack_packed(packed, 0, session=other),
                 lambda: port.extend_packed(packed, 0, session=other),
                 lambda: port.term_packed(packed, session=other)):
        with pytest.raises(StaleReceipt) as raised:
            call()
        assert raised.value.receipts == [receipt]
    assert port.ack_frames([packed], session=other) == [receipt]
    assert port.release_packed(packed, session=other) == 0
    assert broker.stats().queues["q"].leased == 1 and port.outstanding(consumer) == 1
    broker.ack(receipt, session=first)                # its own session may
    assert broker.stats().queues["q"].acked == 1 and port.outstanding(consumer) == 0


def test_the_embedded_caller_settles_any_lease_and_owns_its_receives(broker: Broker) -> None:
    port = broker.server_port()
    broker.create_queue("q")
    broker.send_batch("q", [b"a", b"b"])
    session = port.open_owner()
    (pushed,) = push(broker, session, 1)
    (received,) = broker.receive("q")                 # the embedded broker's: owner 0
    assert port.outstanding(0) == 1 and port.outstanding(session) == 1
    with pytest.raises(StaleReceipt):
        broker.ack(received.receipt, session=session)
    broker.ack(pushed)                                # session 0: any lease
    received.ack()
    assert port.outstanding(0) == 0 and port.outstanding(session) == 0


def test_a_closed_owner_lives_until_its_last_lease_ends(broker: Broker) -> None:
    port = broker.server_port()
    broker.create_queue("q")
    broker.send_batch("q", [b"a", b"b"])
    session, consumer = consumer_of(broker, 5)
    first, second = push(broker, consumer)
    port.close_owner(consumer)                      # a cancelled consumer
    with pytest.raises(InvalidArgument):
        push(broker, consumer)
    broker.ack(first, session=session)                # its session still settles
    other = port.open_owner(session, 1)
    assert other != consumer                          # its tag is not reused yet
    broker.ack(second, session=session)
    port.close_owner(other)
    assert port.open_owner(session, 1) in (consumer, other)   # now it may be


def test_a_closed_session_lives_while_its_consumers_hold_leases(broker: Broker) -> None:
    port = broker.server_port()
    broker.create_queue("q")
    broker.send("q", b"a")
    session, consumer = consumer_of(broker, 5)
    (receipt,) = push(broker, consumer)
    port.close_owner(consumer)
    port.close_owner(session)
    fresh = {port.open_owner() for _ in range(3)}
    assert not fresh & {session, consumer}            # neither tag is reused yet
    broker.ack(receipt)
    assert {session, consumer} <= {port.open_owner() for _ in range(5)}


def test_bad_owner_tags_are_refused(broker: Broker) -> None:
    port = broker.server_port()
    broker.create_queue("q")
    session, consumer = consumer_of(broker, 1)
    for bad in (99, -1, "1", None):
        with pytest.raises(InvalidArgument):
            push(broker, bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        port.open_owner(consumer, 1)                # a consumer has no consumers
    with pytest.raises(InvalidArgument):
        broker.ack(1, session=consumer)               # a consumer is not a session
    with pytest.raises(InvalidArgument):
        port.close_owner(0)                         # the embedded broker's
    for prefetch in (-1, 1_000_001, 1.5):
        with pytest.raises(InvalidArgument):
            port.open_owner(session, prefetch)  # type: ignore[arg-type]
    port.close_owner(consumer)
    with pytest.raises(InvalidArgument):
        port.close_owner(consumer)                  # closed already
