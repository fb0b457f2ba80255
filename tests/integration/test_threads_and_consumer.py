"""One blocking client shared by a consuming thread and calling threads.

A consumer's iteration waits for pushes in the transport's ``recv`` with the client's
lock held, a tenth of a second at a time, and took the lock straight back after each
wait: a call from another thread waited for whole waits (a median of 200 ms for
``stats()``, a second at times; four publishing threads made 800 publishes take ten
seconds). A call now wakes the waiting thread, which steps aside for it; the answer a
pumping thread read for a waiting caller ends that caller's wait.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import Counter
from typing import Any

import pytest
from conftest import Tracker

PUBLISHERS = 4
PER_PUBLISHER = 200
CALLS = 21
MEDIAN_LIMIT = 0.05   # half of one recv wait of the consuming thread; it was 0.2 s


def _consuming(client: Any, queue: str, received: Counter[bytes], stop: threading.Event,
               idle: threading.Event) -> threading.Thread:
    consumer = client.consume(queue, prefetch=50)

    def run() -> None:
        while not stop.is_set():
            batch = consumer.next_batch(0.2)
            if batch is None:
                idle.set()   # it has waited in recv, and waits again now
                continue
            for message in batch:
                received[message.body] += 1
            batch.ack()
        consumer.cancel()

    thread = threading.Thread(target=run, name="test-consumer")
    thread.start()
    return thread


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_calls_from_other_threads_do_not_wait_for_the_consumer(track: Tracker,
                                                               kind: str) -> None:
    endpoint = track.endpoint(kind)
    track.broker_process(endpoint)   # its own process, as in use (not a thread here)
    client = track.client(endpoint)
    client.create_queue("q")
    client.create_topic("t")
    client.subscribe("t", "q")
    received: Counter[bytes] = Counter()
    stop = threading.Event()
    idle = threading.Event()
    consumer = _consuming(client, "q", received, stop, idle)
    try:
        assert idle.wait(10)
        durations = []
        for _ in range(CALLS):   # the consumer is idle: it waits in recv
            start = time.monotonic()
            client.stats()
            durations.append(time.monotonic() - start)
        assert statistics.median(durations) < MEDIAN_LIMIT, durations

        def publish(number: int) -> None:
            for index in range(PER_PUBLISHER):
                client.publish("t", b"%d-%d" % (number, index))

        publishers = [threading.Thread(target=publish, args=(number,))
                      for number in range(PUBLISHERS)]
        for thread in publishers:
            thread.start()
        for thread in publishers:
            thread.join(60)
            assert not thread.is_alive()
        expected = {b"%d-%d" % (n, i) for n in range(PUBLISHERS) for i in range(PER_PUBLISHER)}
        track.wait_until(lambda: len(received) == len(expected), what="every message")
        assert set(received) == expected
        assert set(received.values()) == {1}   # each once: no loss, no duplicate
    finally:
        stop.set()
        consumer.join(10)
    assert not consumer.is_alive()
    track.wait_until(lambda: client.stats().queues["q"].messages == 0,
                     what="every message acked")
