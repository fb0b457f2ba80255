"""Embedded-broker micro-benchmarks, each beside its baseline (same run, same process).

Every benchmark records ``items`` (messages or deliveries per round) in extra_info so
``bench/report.py`` can turn medians into rates and ratios. Group names pair a
fastfanout benchmark with its baseline (the one whose name ends in ``baseline``).
"""

import queue
import threading

import pytest

from fastfanout import Broker

BODY = b"x" * 64
BATCH = 100
ROUNDS_PER_CALL = 50  # batches per timed call


@pytest.fixture
def fanout_broker():
    broker = Broker()
    broker.create_topic("t")
    for name in ("a", "b", "c", "d"):
        broker.create_queue(name)
        broker.subscribe("t", name)
    yield broker
    broker.close()


@pytest.mark.benchmark(group="publish_batch to 4 queues (deliveries)")
def test_publish_batch_fanout_4(benchmark, fanout_broker):
    bodies = [BODY] * BATCH

    def run():
        for _ in range(ROUNDS_PER_CALL):
            fanout_broker.publish_batch("t", bodies)
        for name in ("a", "b", "c", "d"):  # keep memory steady: drop what was enqueued
            fanout_broker.purge(name)

    benchmark.extra_info["items"] = ROUNDS_PER_CALL * BATCH * 4
    benchmark(run)


@pytest.mark.benchmark(group="publish_batch to 4 queues (deliveries)")
def test_publish_fanout_4_python_model_baseline(benchmark):
    # The same semantics in plain Python: the reference model (fastfanout.model).
    from fastfanout.model import ModelBroker

    model = ModelBroker()
    model.create_topic("t")
    for name in ("a", "b", "c", "d"):
        model.create_queue(name)
        model.subscribe("t", name)
    bodies = [BODY] * BATCH

    def run():
        for _ in range(ROUNDS_PER_CALL // 10):
            model.publish_batch("t", bodies)
        for name in ("a", "b", "c", "d"):
            model.purge(name)

    benchmark.extra_info["items"] = ROUNDS_PER_CALL // 10 * BATCH * 4
    benchmark(run)


@pytest.mark.benchmark(group="send -> receive(100) -> ack_batch cycle (messages)")
def test_send_receive_ack_cycle(benchmark):
    broker = Broker()
    broker.create_queue("q")
    bodies = [BODY] * BATCH

    def run():
        for _ in range(ROUNDS_PER_CALL):
            broker.send_batch("q", bodies)
            messages = broker.receive("q", max_messages=BATCH)
            broker.ack_batch([m.receipt for m in messages])

    benchmark.extra_info["items"] = ROUNDS_PER_CALL * BATCH
    benchmark(run)
    assert broker.stats().queues["q"].messages == 0


@pytest.mark.benchmark(group="send -> receive(100) -> ack_batch cycle (messages)")
def test_single_send_receive_ack_cycle(benchmark):
    broker = Broker()
    broker.create_queue("q")

    def run():
        for _ in range(ROUNDS_PER_CALL * 10):
            broker.send("q", BODY)
            (message,) = broker.receive("q")
            broker.ack(message.receipt)

    benchmark.extra_info["items"] = ROUNDS_PER_CALL * 10
    benchmark(run)


@pytest.mark.benchmark(group="send -> receive(100) -> ack_batch cycle (messages)")
def test_queue_queue_two_threads_baseline(benchmark):
    count = ROUNDS_PER_CALL * BATCH

    def run():
        channel: queue.Queue[bytes] = queue.Queue()

        def consume():
            for _ in range(count):
                channel.get()
                channel.task_done()

        consumer = threading.Thread(target=consume)
        consumer.start()
        for _ in range(count):
            channel.put(BODY)
        consumer.join(60)
        assert not consumer.is_alive()

    benchmark.extra_info["items"] = count
    benchmark(run)


@pytest.mark.benchmark(group="one call per message from a producer thread (messages)")
def test_producer_offer_then_flush(benchmark, fanout_broker):
    producer = fanout_broker.producer("t")
    count = ROUNDS_PER_CALL * BATCH

    def run():
        for _ in range(count):
            producer.offer(BODY)
        producer.flush()
        for name in ("a", "b", "c", "d"):
            fanout_broker.purge(name)

    benchmark.extra_info["items"] = count
    benchmark(run)


@pytest.mark.benchmark(group="one call per message from a producer thread (messages)")
def test_broker_publish_per_message(benchmark, fanout_broker):
    count = ROUNDS_PER_CALL * 10

    def run():
        for _ in range(count):
            fanout_broker.publish("t", BODY)
        for name in ("a", "b", "c", "d"):
            fanout_broker.purge(name)

    benchmark.extra_info["items"] = count
    benchmark(run)


@pytest.mark.benchmark(group="one call per message from a producer thread (messages)")
def test_queue_queue_put_baseline(benchmark):
    count = ROUNDS_PER_CALL * BATCH
    channel: queue.Queue[bytes] = queue.Queue()

    def run():
        for _ in range(count):
            channel.put(BODY)
        while not channel.empty():
            channel.get_nowait()

    benchmark.extra_info["items"] = count
    benchmark(run)


# -- one message at a time between two threads (issue 15) ---------------------------------
#
# A producer thread hands messages one at a time to a consumer thread that waits when it
# finds none: the broker's ``send`` against ``receive(wait=...)`` + ``message.ack()``, and
# ``queue.Queue``'s ``put`` against a blocking ``get``. The same count, the same body, the
# same two threads (the consumer started, the producer the benchmark's own): only the
# channel differs.

TWO_THREAD_COUNT = 20_000   # messages per round


def _two_threads(produce, consume):
    """Run ``consume()`` in a new thread while this one runs ``produce()``; both end."""
    consumer = threading.Thread(target=consume)
    consumer.start()
    produce()
    consumer.join(60)
    assert not consumer.is_alive()


@pytest.mark.benchmark(group="one message at a time, producer thread -> consumer thread "
                             "(messages)")
def test_send_then_receive_ack_two_threads(benchmark):
    broker = Broker()
    broker.create_queue("q")
    count = TWO_THREAD_COUNT

    def produce():
        send = broker.send
        for _ in range(count):
            send("q", BODY)

    def consume():
        receive = broker.receive
        for _ in range(count):
            (message,) = receive("q", wait=20.0)
            message.ack()

    benchmark.extra_info["items"] = count
    benchmark(_two_threads, produce, consume)
    stats = broker.stats().queues["q"]
    assert stats.messages == 0 and stats.acked == stats.enqueued


@pytest.mark.benchmark(group="one message at a time, producer thread -> consumer thread "
                             "(messages)")
def test_queue_queue_put_get_two_threads_baseline(benchmark):
    channel: queue.Queue[bytes] = queue.Queue()
    count = TWO_THREAD_COUNT

    def produce():
        put = channel.put
        for _ in range(count):
            put(BODY)

    def consume():
        get = channel.get
        for _ in range(count):
            get()

    benchmark.extra_info["items"] = count
    benchmark(_two_threads, produce, consume)
    assert channel.empty()
