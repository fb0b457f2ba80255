"""Short-lived queues and topics: a deleted one's memory and id are reused, nothing leaks.

Every create + delete used to keep about 3.5 KB (ids never reused, removed slots keeping
their allocations). Now a deleted queue or topic frees its allocations and its id slot
is taken by the next one created, so a day of short-lived queues holds the broker's
memory flat. A reused id must not confuse what outlives the queue: receipts of the
deleted queue stay stale, and dead-lettered copies keep naming their source queue.
"""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest
from clocks import FakeClock

from fastfanout import Broker, StaleReceipt

CYCLES = 20_000
TRACED = 5_000   # of them, under tracemalloc (it makes each cycle four times slower)


def resident_bytes() -> int:
    """This process's resident set size (Linux), 0 where /proc is not there."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def churn(broker: Broker, start: int, count: int) -> None:
    """Create, use and delete ``count`` short-lived queues and topics."""
    for n in range(start, start + count):
        queue, topic = f"q{n}", f"t{n}"
        broker.create_queue(queue, max_priority=3, redelivery_backoff=(1.0, 2.0))
        broker.create_topic(topic, content_dedup=True)
        broker.subscribe(topic, queue, filter_policy={"kind": ["a"]})
        broker.publish(topic, b"m", attributes={"kind": "a"})
        broker.delete_topic(topic)
        broker.delete_queue(queue)


def test_create_and_delete_keeps_memory_flat(broker: Broker) -> None:
    broker.create_queue("lasting")
    broker.create_topic("lasting-topic")
    broker.subscribe("lasting-topic", "lasting")
    churn(broker, 0, 1_000)   # warm up: tables, free lists, caches at their size
    gc.collect()
    resident = resident_bytes()
    churn(broker, 1_000, CYCLES - TRACED)
    gc.collect()
    # ~3.5 KB a cycle before (50 MB here); the allocator may keep a little
    assert resident_bytes() - resident < 8 << 20
    tracemalloc.start()
    try:
        churn(broker, CYCLES, 500)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        churn(broker, CYCLES + 500, TRACED)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # every allocation counted, native ones too (PyMem): nothing beyond noise
    assert grown < 64 * 1024, f"{grown} bytes kept by {TRACED} short-lived queues and topics"
    assert broker.list_queues() == ["lasting"]
    assert broker.list_topics() == ["lasting-topic"]
    assert broker.publish("lasting-topic", b"x").deliveries == 1
    assert broker.check()


def test_stale_receipts_stay_stale_when_the_id_is_reused(broker: Broker) -> None:
    broker.create_queue("old")
    broker.send("old", b"m")
    (message,) = broker.receive("old")
    broker.delete_queue("old")
    broker.create_queue("new")   # takes the old queue's id (and maybe the entry slot)
    broker.send("new", b"n")
    (fresh,) = broker.receive("new")
    for settle in (broker.ack, broker.term, lambda r: broker.nack(r),
                   lambda r: broker.extend(r, 5.0)):
        with pytest.raises(StaleReceipt):
            settle(message.receipt)
    stats = broker.stats().queues["new"]
    assert (stats.leased, stats.acked, stats.dead_lettered) == (1, 0, 0)
    broker.ack(fresh.receipt)
    assert broker.stats().queues["new"].acked == 1


def test_dead_letters_keep_naming_a_deleted_source(broker: Broker, clock: FakeClock) -> None:
    broker.create_queue("dlq")
    broker.create_queue("source", dead_letter_queue="dlq", max_receive_count=1)
    broker.send("source", b"m")
    broker.term(broker.receive("source")[0].receipt)
    broker.delete_queue("source")
    broker.create_queue("stranger")   # takes the source's id
    broker.create_topic("t")
    broker.subscribe("t", "stranger")
    (dead,) = broker.receive("dlq", visibility_timeout=0.0)
    assert dead.dead_letter is not None and dead.dead_letter.source_queue == "source"
    # redrive to the source by name: there is none, so it stays (not into "stranger")
    assert broker.redrive("dlq") == 0
    broker.create_queue("source")
    assert broker.redrive("dlq") == 1
    assert [m.body for m in broker.receive("source")] == [b"m"]
    assert broker.stats().queues["stranger"].enqueued == 0
