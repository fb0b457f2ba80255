"""The lock-free Producer of the embedded broker, from threads."""

import threading

import pytest

from fastfanout import Broker, Closed, MessageTooLarge, NotFound, QueueFull

JOIN_DEADLINE = 30.0


def test_offers_are_published_on_flush_in_order(broker):
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    producer = broker.producer("t")
    for n in range(5):
        producer.offer(f"m{n}".encode())
    assert producer.pending == 5 and broker.receive("q") == []
    results = producer.flush()
    assert results is not None and len(results) == 5
    assert producer.pending == 0 and producer.published == 5
    assert [m.body for m in broker.receive("q", max_messages=10)] == [
        f"m{n}".encode() for n in range(5)]
    assert producer.flush() is None


def test_a_full_ring_flushes_itself(broker):
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    with broker.producer("t", capacity=8) as producer:
        for n in range(20):
            producer.offer(bytes([n]))
        assert producer.full_count >= 2
    assert broker.stats().queues["q"].enqueued == 20  # close() flushed the rest
    with pytest.raises(Closed):
        producer.offer(b"late")


def test_a_refused_batch_is_kept_and_retried(broker):
    broker.create_topic("t")
    broker.create_queue("q", max_messages=2)
    broker.subscribe("t", "q")
    producer = broker.producer("t")
    for n in range(3):
        producer.offer(bytes([n]))
    with pytest.raises(QueueFull):
        producer.flush()
    assert producer.pending == 3 and broker.stats().queues["q"].messages == 0
    broker.delete_queue("q")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    producer.flush()
    assert [m.body for m in broker.receive("q", max_messages=5)] == [b"\0", b"\1", b"\2"]


def test_bad_input(broker):
    with pytest.raises(NotFound):
        broker.producer("missing")
    broker.create_topic("t")
    producer = broker.producer("t", max_bytes=16)
    with pytest.raises(MessageTooLarge):
        producer.offer(b"x" * 17)
    assert producer.pending == 0


def test_a_producer_thread_and_consumer_threads():
    broker = Broker()
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    total = 50_000
    received: list[bytes] = []
    errors: list[BaseException] = []

    def produce():
        try:
            with broker.producer("t", capacity=1024) as producer:
                for n in range(total):
                    producer.offer(n.to_bytes(4, "little"))
                    if n % 5000 == 4999:
                        producer.flush()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def consume():
        try:
            while len(received) < total:
                messages = broker.receive("q", max_messages=500, wait=0.05)
                broker.ack_batch([m.receipt for m in messages])
                received.extend(m.body for m in messages)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_DEADLINE)
    assert not any(thread.is_alive() for thread in threads), "threads did not finish"
    assert not errors
    assert [int.from_bytes(body, "little") for body in received] == list(range(total))
    assert broker.check()


def test_a_batch_refused_for_a_message_too_large_is_dropped_once(broker):
    broker.create_topic("t")
    broker.create_queue("q", max_message_size=100)
    broker.subscribe("t", "q")
    producer = broker.producer("t")
    producer.offer(b"a")
    producer.offer(b"x" * 101)                # over the queue's max_message_size
    with pytest.raises(MessageTooLarge):
        producer.flush()                      # the batch's refusal, raised once...
    assert producer.dropped_batches == 1 and producer.pending == 0
    producer.offer(b"b")                      # ...and the producer goes on
    results = producer.flush()
    assert results is not None and len(results) == 1
    producer.close()
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"b"]


def test_closing_the_broker_flushes_its_open_producers_first(tmp_path):
    # until 2026-12-05 Broker.close() left what producers had offered in their rings:
    # a durable broker lost it, a later offer() was taken silently, producer.close()
    # raised Closed and left the producer open
    with Broker(data_dir=str(tmp_path)) as broker:
        broker.create_topic("t")
        broker.create_queue("q")
        broker.subscribe("t", "q")
        producer = broker.producer("t")
        producer.offer(b"a")
        producer.offer(b"b")
        with broker.producer("t") as flushed:   # closed by its block: not closed again
            flushed.offer(b"c")
    assert producer.pending == 0 and producer.published == 2
    with pytest.raises(Closed):
        producer.offer(b"late")
    producer.close()   # already closed by the broker: nothing to do
    with Broker(data_dir=str(tmp_path)) as broker:
        bodies = [m.body for m in broker.receive("q", max_messages=10)]
    assert sorted(bodies) == [b"a", b"b", b"c"]


def test_a_refused_flush_at_broker_close_is_raised_and_the_broker_closes(broker):
    broker.create_topic("t")
    broker.create_queue("q", max_messages=1, overflow="reject")
    broker.subscribe("t", "q")
    broker.publish("t", b"fills the queue")
    producer = broker.producer("t")
    producer.offer(b"refused")
    with pytest.raises(QueueFull):
        broker.close()
    assert broker.closed
    assert producer.pending == 1   # the refused batch, never published
    with pytest.raises(Closed):
        producer.offer(b"late")
    with pytest.raises(Closed):
        broker.publish("t", b"x")


def test_a_producer_whose_topic_was_deleted_discards_its_messages_and_closes(broker):
    # until 2026-12-07 close() raised NotFound at every call, the producer stayed open,
    # and broker.close() raised it too: no way to drop messages meant for a topic
    # deleted on purpose
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    producer = broker.producer("t")
    producer.offer(b"kept")
    producer.flush()
    for n in range(5):
        producer.offer(b"x%d" % n)
    broker.delete_topic("t")
    with pytest.raises(NotFound):
        producer.close()
    producer.offer(b"y")                     # still open: taken
    assert producer.pending == 6
    assert producer.discard() == 6
    assert producer.pending == 0 and producer.discarded == 6
    producer.close()
    with pytest.raises(Closed):
        producer.offer(b"late")
    assert producer.published == 1
    broker.close()                           # no refusal left to raise
    assert producer.discard() == 0


def test_a_discard_leaves_the_producer_usable(broker):
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    producer = broker.producer("t")
    producer.offer(b"dropped")
    assert producer.discard() == 1
    producer.offer(b"sent")
    producer.close()
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"sent"]
