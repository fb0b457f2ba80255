"""The embedded broker used from several threads at once."""

import threading
import time

import pytest

from fastfanout import Broker, Closed

JOIN_DEADLINE = 30.0


def join_all(threads):
    for thread in threads:
        thread.join(JOIN_DEADLINE)
    alive = [thread.name for thread in threads if thread.is_alive()]
    assert not alive, f"threads still running after {JOIN_DEADLINE}s: {alive}"


def test_producers_and_competing_consumers_lose_and_duplicate_nothing():
    broker = Broker()
    broker.create_topic("t")
    for name in ("a", "b"):
        broker.create_queue(name)
        broker.subscribe("t", name)
    per_producer = 5_000
    producers = 3
    received: dict[str, list[int]] = {"a": [], "b": []}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def produce(index):
        try:
            for start in range(0, per_producer, 100):
                broker.publish_batch(
                    "t", [f"{index}:{n}".encode() for n in range(start, start + 100)])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def consume(queue):
        try:
            while True:
                with lock:
                    if len(received[queue]) >= per_producer * producers:
                        return
                messages = broker.receive(queue, max_messages=64, wait=0.05)
                broker.ack_batch([m.receipt for m in messages])
                with lock:
                    received[queue].extend(m.id for m in messages)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=produce, args=(i,), name=f"p{i}") for i in range(producers)]
    threads += [threading.Thread(target=consume, args=(q,), name=f"c{q}{i}")
                for q in ("a", "b") for i in range(2)]
    for thread in threads:
        thread.start()
    join_all(threads)
    assert not errors
    for queue in ("a", "b"):
        ids = received[queue]
        assert len(ids) == len(set(ids)) == per_producer * producers
        stats = broker.stats().queues[queue]
        assert stats.acked == per_producer * producers and stats.messages == 0
    assert broker.check()


def test_long_poll_wakes_on_send():
    broker = Broker()
    broker.create_queue("q")
    started = threading.Event()
    result = []

    def waiter():
        started.set()
        result.extend(broker.receive("q", wait=10))

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait(JOIN_DEADLINE)
    # The waiter may not be parked yet; a send either wakes it or is seen on its first try.
    broker.send("q", b"wake up")
    join_all([thread])
    assert [m.body for m in result] == [b"wake up"]


def test_long_poll_times_out_empty():
    broker = Broker()
    broker.create_queue("q")
    began = time.monotonic()
    assert broker.receive("q", wait=0.1) == []
    assert time.monotonic() - began >= 0.1


def test_long_poll_sees_a_delay_end():
    broker = Broker()
    broker.create_queue("q")
    broker.send("q", b"soon", delay=0.05)
    assert [m.body for m in broker.receive("q", wait=5)] == [b"soon"]


def test_close_releases_waiters():
    broker = Broker()
    broker.create_queue("q")
    outcome = []
    started = threading.Event()

    def waiter():
        started.set()
        try:
            broker.receive("q", wait=20)
            outcome.append("returned")
        except Closed:
            outcome.append("closed")

    thread = threading.Thread(target=waiter)
    thread.start()
    assert started.wait(JOIN_DEADLINE)
    deadline = time.monotonic() + JOIN_DEADLINE
    while broker.waiting_receivers == 0 and time.monotonic() < deadline:  # until parked
        time.sleep(0.001)
    assert broker.waiting_receivers == 1
    broker.close()
    join_all([thread])
    assert outcome == ["closed"]
    assert broker.waiting_receivers == 0


@pytest.mark.parametrize("queue_count", [1, 4])
def test_many_threads_ack_nack_extend(queue_count):
    broker = Broker()
    names = [f"q{i}" for i in range(queue_count)]
    for name in names:
        broker.create_queue(name, visibility_timeout=5)
        broker.send_batch(name, [b"m"] * 2_000)
    errors = []

    def worker(name, seed):
        try:
            count = 0
            while True:
                messages = broker.receive(name, max_messages=10)
                if not messages:
                    if broker.stats().queues[name].messages == 0:
                        return
                    continue
                for message in messages:
                    count += 1
                    if (count + seed) % 7 == 0:
                        message.nack()
                    elif (count + seed) % 11 == 0:
                        message.extend(1)
                        message.ack()
                    else:
                        message.ack()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(names[i % queue_count], i)) for i in range(4)]
    for thread in threads:
        thread.start()
    join_all(threads)
    assert not errors
    for name in names:
        assert broker.stats().queues[name].acked == 2_000
    assert broker.check()
