"""The batch forms of nack, extend and term on the embedded broker (docs/semantics.md):
each receipt settled as the single form would, in order; all or none, as ``ack_batch``."""

from __future__ import annotations

import numpy as np
import pytest

from fastfanout import Broker, Closed, InvalidArgument, StaleReceipt


def leased(broker: Broker, count: int, **settings: object) -> list[int]:
    broker.create_queue("q", visibility_timeout=30, **settings)
    broker.send_batch("q", [b"m%d" % index for index in range(count)])
    return [m.receipt for m in broker.receive("q", max_messages=count)]


def counts(broker: Broker, queue: str = "q") -> tuple[int, int, int, int]:
    stats = broker.stats().queues[queue]
    return stats.visible, stats.leased, stats.delayed, stats.acked


def test_nack_batch_returns_every_message_after_the_delay(broker, clock):
    receipts = leased(broker, 3)
    broker.nack_batch(receipts, delay=5.0)
    assert counts(broker) == (0, 0, 3, 0)
    clock.advance(5.0)
    again = broker.receive("q", max_messages=3)
    assert sorted(m.body for m in again) == [b"m0", b"m1", b"m2"]
    assert all(m.receive_count == 2 for m in again)


def test_nack_batch_without_a_delay_applies_each_queues_backoff(broker, clock):
    receipts = leased(broker, 2, redelivery_backoff=[2.0])
    broker.nack_batch(receipts)
    assert counts(broker) == (0, 0, 2, 0)
    clock.advance(2.0)
    assert counts(broker) == (2, 0, 0, 0)
    broker.nack_batch([m.receipt for m in broker.receive("q", max_messages=2)], delay=0)
    assert counts(broker) == (2, 0, 0, 0)


def test_extend_batch_moves_every_lease_and_keeps_the_receipts(broker, clock):
    receipts = leased(broker, 2)
    broker.extend_batch(receipts, 100.0)
    clock.advance(60.0)   # past the queue's 30 s: still leased
    assert counts(broker) == (0, 2, 0, 0)
    broker.ack_batch(receipts)
    assert counts(broker) == (0, 0, 0, 2)


def test_extend_batch_to_zero_returns_every_message_and_stales_the_receipts(broker):
    receipts = leased(broker, 2, redelivery_backoff=[10.0])
    broker.extend_batch(receipts, 0)    # as nack(delay=0): no backoff
    assert counts(broker) == (2, 0, 0, 0)
    with pytest.raises(StaleReceipt):
        broker.ack_batch(receipts)


def test_term_batch_dead_letters_every_message(broker):
    broker.create_queue("dlq")
    receipts = leased(broker, 3, dead_letter_queue="dlq")
    broker.term_batch(receipts)
    dead = broker.receive("dlq", max_messages=3)
    assert [m.body for m in dead] == [b"m0", b"m1", b"m2"]
    assert {m.dead_letter.reason for m in dead} == {"rejected"}
    assert broker.stats().queues["q"].dead_lettered == 3


@pytest.mark.parametrize("call", [
    lambda broker, receipts: broker.nack_batch(receipts),
    lambda broker, receipts: broker.nack_batch(receipts, delay=1.0),
    lambda broker, receipts: broker.extend_batch(receipts, 60.0),
    lambda broker, receipts: broker.extend_batch(receipts, 0),
    lambda broker, receipts: broker.term_batch(receipts),
], ids=["nack", "nack-delay", "extend", "extend-0", "term"])
def test_one_stale_receipt_fails_the_whole_batch_and_changes_nothing(broker, clock, call):
    """As ``ack_batch``: StaleReceipt lists each stale receipt once, in order; no receipt
    of the batch was settled (a fresh one is still leased, to its old lease end)."""
    broker.create_queue("dlq")
    receipts = leased(broker, 3, dead_letter_queue="dlq")
    broker.ack(receipts[1])
    unknown = 2**64 - 1
    with pytest.raises(StaleReceipt) as caught:
        call(broker, [receipts[0], receipts[1], unknown, receipts[1], receipts[2]])
    assert caught.value.receipts == [receipts[1], unknown]
    assert counts(broker) == (0, 2, 0, 1)
    assert counts(broker, "dlq") == (0, 0, 0, 0)
    clock.advance(30.0)   # the leases end when they did before the call
    assert counts(broker) == (2, 0, 0, 1)


@pytest.mark.parametrize("call, left", [
    (lambda broker, receipts: broker.nack_batch(receipts, delay=0), 2),
    (lambda broker, receipts: broker.extend_batch(receipts, 0), 2),
    (lambda broker, receipts: broker.term_batch(receipts), 0),   # no DLQ: dropped
], ids=["nack", "extend-0", "term"])
def test_a_receipt_repeated_in_a_batch_is_settled_once(broker, call, left):
    receipts = leased(broker, 2)
    call(broker, [receipts[0], receipts[1], receipts[0]])
    stats = broker.stats().queues["q"]
    assert (stats.leased, stats.messages, stats.dropped["rejected"]) == (0, left, 2 - left)
    assert [m.receive_count for m in broker.receive("q", max_messages=3)] == [2] * left


@pytest.mark.parametrize("call, match", [
    (lambda broker, receipts: broker.nack_batch(receipts, delay=-1.0), "delay"),
    (lambda broker, receipts: broker.nack_batch(receipts, delay=float("nan")), "delay"),
    (lambda broker, receipts: broker.nack_batch(receipts, delay="1"), "delay"),
    (lambda broker, receipts: broker.nack_batch(receipts, delay=31_536_001), "delay"),
    (lambda broker, receipts: broker.extend_batch(receipts, 43_201.0), "seconds"),
    (lambda broker, receipts: broker.extend_batch(receipts, -0.5), "seconds"),
    (lambda broker, receipts: broker.extend_batch(receipts, None), "seconds"),
    (lambda broker, receipts: broker.nack_batch([*receipts, -1]), "receipt"),
    (lambda broker, receipts: broker.extend_batch([*receipts, "x"], 5.0), "receipt"),
    (lambda broker, receipts: broker.term_batch([*receipts, True]), "receipt"),
    (lambda broker, receipts: broker.term_batch(7), "iterable"),
    (lambda broker, receipts: broker.nack_batch(np.array(receipts, np.float64)), "1-D"),
])
def test_bad_arguments_are_refused_up_front_and_change_nothing(broker, clock, call, match):
    receipts = leased(broker, 2)
    with pytest.raises(InvalidArgument, match=match):
        call(broker, receipts)
    assert counts(broker) == (0, 2, 0, 0)


@pytest.mark.parametrize("convert", [
    lambda receipts: np.array(receipts, dtype=np.uint64),
    lambda receipts: np.array(receipts, dtype=np.int64),
    tuple,
    lambda receipts: (receipt for receipt in receipts),
    lambda receipts: [np.uint64(receipt) for receipt in receipts],
], ids=["uint64", "int64", "tuple", "generator", "numpy-ints"])
def test_receipts_are_taken_as_ack_batch_takes_them(broker, convert):
    broker.create_queue("dlq")
    receipts = leased(broker, 6, dead_letter_queue="dlq")
    broker.extend_batch(convert(receipts[:2]), 0)
    broker.nack_batch(convert(receipts[2:4]), delay=0.0)
    broker.term_batch(convert(receipts[4:]))
    assert counts(broker) == (4, 0, 0, 0)
    assert counts(broker, "dlq") == (2, 0, 0, 0)


def test_a_strided_array_is_read_as_it_is(broker):
    receipts = np.array(leased(broker, 3), dtype=np.uint64)
    broker.nack_batch(receipts[::2], delay=0)
    assert counts(broker) == (2, 1, 0, 0)


def test_empty_batches_do_nothing(broker):
    receipts = leased(broker, 1)
    broker.nack_batch([])
    broker.extend_batch(np.array([], dtype=np.uint64), 0)
    broker.term_batch(())
    assert counts(broker) == (0, 1, 0, 0)
    broker.ack_batch(receipts)


def test_after_close_every_batch_form_raises_closed(broker):
    receipts = leased(broker, 1)
    broker.close()
    for call in (lambda: broker.nack_batch(receipts), lambda: broker.extend_batch(receipts, 1),
                 lambda: broker.term_batch(receipts), lambda: broker.nack_batch(5, delay=-1)):
        with pytest.raises(Closed):
            call()


def test_a_consumers_batch_nacks_or_terms_what_was_not_settled_on_its_own(broker):
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.send_batch("q", [b"a", b"b", b"c", b"d"])
    consumer = broker.consume("q", prefetch=2)
    batch = consumer.next_batch(1.0)
    assert batch is not None and len(batch) == 2
    batch[0].ack()
    batch.nack(delay=0)                                  # the other one only
    stats = broker.stats().queues["q"]
    assert (stats.acked, stats.visible, stats.leased) == (1, 3, 0)
    batch = consumer.next_batch(1.0)                     # the credit came back
    assert batch is not None and len(batch) == 2
    with pytest.raises(InvalidArgument, match="delay"):
        batch.nack(delay=-1)                             # checked first: still unsettled
    batch.term()
    assert broker.stats().queues["dlq"].visible == 2
    with pytest.raises(StaleReceipt):
        broker.ack_batch(batch.receipts)
    batch.term()                                         # settled already: nothing to do
    batch = consumer.next_batch(1.0)
    assert batch is not None and len(batch) == 1
    broker.ack_batch(batch.receipts)
    with pytest.raises(StaleReceipt):
        batch.nack()                                     # as batch.ack(): all or none
