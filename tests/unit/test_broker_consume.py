"""Broker.consume: the embedded push path (no polling, credit counted by the broker)."""

from __future__ import annotations

import threading
import time

import pytest
from waits import wait_until_parked

from fastfanout import Broker, Closed, InvalidArgument, NotFound


@pytest.fixture
def broker() -> Broker:
    broker = Broker()
    broker.create_queue("q")
    return broker


def test_messages_come_as_they_are_published(broker: Broker) -> None:
    consumer = broker.consume("q", prefetch=10, timeout=5.0)
    got: list[bytes] = []

    def take() -> None:
        for message in consumer:
            got.append(message.body)
            message.ack()
            if len(got) == 3:
                consumer.cancel()

    thread = threading.Thread(target=take)
    thread.start()
    for body in (b"a", b"b", b"c"):
        broker.send("q", body)
    thread.join(5.0)
    assert not thread.is_alive()
    assert got == [b"a", b"b", b"c"]
    assert broker.stats().queues["q"].acked == 3


def test_prefetch_bounds_what_is_held_however_it_is_settled(broker: Broker) -> None:
    broker.send_batch("q", [b"m%d" % n for n in range(10)])
    consumer = broker.consume("q", prefetch=3)
    first = consumer.next_batch(1.0)
    assert first is not None and len(first) == 3
    assert consumer.next_batch(0.05) is None          # no credit left
    broker.ack(first[0].receipt)                      # by receipt, not through the message
    first[1].nack(delay=0.0)
    second = consumer.next_batch(1.0)
    assert second is not None and len(second) == 2
    consumer.cancel()
    assert broker.stats().queues["q"].leased == 3     # held ones stay leased


def test_an_ack_wakes_a_consumer_out_of_credit(broker: Broker) -> None:
    broker.send_batch("q", [b"1", b"2"])
    consumer = broker.consume("q", prefetch=1)
    (held,) = consumer.next_batch(1.0) or []
    woke: list[float] = []

    def wait() -> None:
        started = time.monotonic()
        batch = consumer.next_batch(60.0)
        woke.append(time.monotonic() - started)
        assert batch is not None and batch[0].body == b"2"

    thread = threading.Thread(target=wait)
    thread.start()
    # Not a synchronisation: had the ack come first, the batch would be there at once
    # and the test would still hold; this pause makes it exercise the wake-up.
    time.sleep(0.1)
    held.ack()
    thread.join(60.0)
    assert woke and woke[0] < 10.0   # woken by the ack, not by the 60 s deadline


def test_the_iteration_ends_after_timeout(broker: Broker) -> None:
    started = time.monotonic()
    assert list(broker.consume("q", timeout=0.1)) == []
    assert time.monotonic() - started < 10.0


def test_bad_arguments_are_refused(broker: Broker) -> None:
    with pytest.raises(NotFound):
        broker.consume("nope")
    for prefetch in (0, 1_000_001, 1.5, True):
        with pytest.raises(InvalidArgument, match="prefetch"):
            broker.consume("q", prefetch=prefetch)
    with pytest.raises(InvalidArgument, match="timeout"):
        broker.consume("q", timeout=0)
    with pytest.raises(InvalidArgument, match="visibility_timeout"):
        broker.consume("q", visibility_timeout=-1)
    with pytest.raises(InvalidArgument, match="owner"):
        broker.receive("q", owner=12345)


def test_deleting_the_queue_ends_a_waiting_consumer_at_once(broker: Broker) -> None:
    # It waited for its whole timeout before it saw the queue was gone.
    consumer = broker.consume("q", timeout=20.0)
    outcome: list[object] = []

    def take() -> None:
        try:
            outcome.extend(message.body for message in consumer)
        except NotFound as error:
            outcome.append(error)

    thread = threading.Thread(target=take)
    thread.start()
    wait_until_parked(broker)
    started = time.monotonic()
    broker.delete_queue("q")
    thread.join(10)
    assert not thread.is_alive()
    assert time.monotonic() - started < 5.0
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound)


def test_cancel_and_break_give_back_what_was_leased_and_not_yielded() -> None:
    # Until 2026-12-05 the iteration's buffer stayed leased until its visibility
    # timeout (a minute here), and a consumer left by ``break`` kept its credit for good.
    broker = Broker()
    broker.create_queue("q", visibility_timeout=60.0)
    for index in range(50):
        broker.send("q", b"%d" % index)
    for message in broker.consume("q", prefetch=20):
        message.ack()
        break
    queue = broker.stats().queues["q"]
    assert (queue.leased, queue.visible) == (0, 49)
    consumer = broker.consume("q", prefetch=20)
    kept = next(consumer)
    consumer.cancel()
    queue = broker.stats().queues["q"]
    assert (queue.leased, queue.visible) == (1, 48)   # the yielded one is the caller's
    assert list(consumer) == []
    kept.ack()
    # what drain() takes is the caller's to settle: cancel leaves it leased
    consumer = broker.consume("q", prefetch=5)
    first = next(consumer)
    taken = consumer.drain()
    consumer.cancel()
    assert broker.stats().queues["q"].leased == 1 + len(taken)
    assert taken and first.receive_count >= 1
    broker.close()


def test_an_iteration_resumed_after_close_raises_closed(broker: Broker) -> None:
    # until 2026-12-05 it yielded what it had taken and not yielded yet, then raised
    for n in range(3):
        broker.send("q", b"m%d" % n)
    consumer = broker.consume("q", prefetch=10)
    iterator = iter(consumer)
    assert next(iterator).body == b"m0"
    batches = broker.consume("q", prefetch=10)
    broker.close()
    with pytest.raises(Closed):
        next(iterator)
    with pytest.raises(Closed):
        batches.next_batch(timeout=1.0)


@pytest.mark.parametrize("first", ["ack", "nack", "term"])
def test_a_batch_settled_after_close_raises_closed_every_time(broker: Broker,
                                                              first: str) -> None:
    # until 2026-12-05 the refused call marked the batch settled: every later ack, nack
    # or term of it did nothing and raised nothing
    broker.send_batch("q", [b"a", b"b"])
    batch = broker.consume("q", prefetch=10).next_batch(timeout=1.0)
    assert batch is not None and len(batch) == 2
    broker.close()
    for name in (first, "ack", "nack", "term"):
        with pytest.raises(Closed):
            getattr(batch, name)()
