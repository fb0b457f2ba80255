"""Ring micro-benchmarks beside their baselines (same run, same process).

Records are 64 bytes, moved 100 at a time. ``extra_info["items"]`` is the records moved
per timed call (``bench/report.py`` turns medians into rates and ratios); each benchmark
also records its own ``records_per_s``. Within a group the ``*_baseline`` benchmarks are
``collections.deque`` doing the same hand-off of bytes objects.
"""

from collections import deque

import pytest

from fastfanout._ext.codec import pack_ring_batch
from fastfanout._ext.ring import Ring

RECORD = b"r" * 64
BATCH = 100
BATCHES_PER_CALL = 100
ITEMS = BATCH * BATCHES_PER_CALL
GROUP = "ring hand-off, 100 x 64-byte records per batch (records)"


def measure(benchmark, run, items=ITEMS):
    benchmark.extra_info["items"] = items
    benchmark(run)
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None when benchmarks are disabled
        benchmark.extra_info["records_per_s"] = items / stats.stats.median


@pytest.mark.benchmark(group=GROUP)
def test_ring_offer_batch_poll_batch(benchmark):
    ring = Ring(1024, 1 << 20)
    frame = pack_ring_batch([RECORD] * BATCH)

    def run():
        for _ in range(BATCHES_PER_CALL):
            ring.offer_batch(frame)
            ring.poll_batch(BATCH)

    measure(benchmark, run)
    assert ring.offered == ring.polled and ring.offered % ITEMS == 0


@pytest.mark.benchmark(group=GROUP)
def test_ring_offer_many_poll_many(benchmark):
    ring = Ring(1024, 1 << 20)
    records = [RECORD] * BATCH

    def run():
        for _ in range(BATCHES_PER_CALL):
            ring.offer_many(records)
            ring.poll_many(BATCH)

    measure(benchmark, run)
    assert ring.offered == ring.polled


@pytest.mark.benchmark(group=GROUP)
def test_ring_offer_poll_single(benchmark):
    ring = Ring(1024, 1 << 20)
    offer = ring.offer
    poll = ring.poll

    def run():
        for _ in range(BATCHES_PER_CALL):
            for _ in range(BATCH):
                offer(RECORD)
            for _ in range(BATCH):
                poll()

    measure(benchmark, run)
    assert ring.offered == ring.polled


@pytest.mark.benchmark(group=GROUP)
def test_deque_append_popleft_baseline(benchmark):
    queue: deque[bytes] = deque()
    append = queue.append
    popleft = queue.popleft

    def run():
        for _ in range(BATCHES_PER_CALL):
            for _ in range(BATCH):
                append(RECORD)
            for _ in range(BATCH):
                popleft()

    measure(benchmark, run)
    assert not queue


@pytest.mark.benchmark(group=GROUP)
def test_deque_extend_popleft_baseline(benchmark):
    queue: deque[bytes] = deque()
    records = [RECORD] * BATCH
    popleft = queue.popleft

    def run():
        for _ in range(BATCHES_PER_CALL):
            queue.extend(records)
            for _ in range(BATCH):
                popleft()

    measure(benchmark, run)
    assert not queue
