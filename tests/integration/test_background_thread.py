"""The blocking client's background thread stays asleep while callers keep frames full
(issue 15): it wakes only for what lingers, heartbeats, and replies nobody reads.

The broker is a process of its own: a server thread here would take the GIL from the
publishing caller for long enough to let its batches linger.
"""

from __future__ import annotations

import time
from typing import Any as Tracker


def _counting_ticks(client: Tracker) -> list[float]:
    """The times the background thread looked at the open batches (one per wake-up)."""
    core = client.connection.core
    ticks: list[float] = []
    batch_due = core.batch_due

    def counted(now: float) -> bool:
        ticks.append(now)
        return bool(batch_due(now))

    core.batch_due = counted
    return ticks


def _client(track: Tracker, **options: object) -> Tracker:
    """A client of a broker process with topic ``t`` fanning out to queue ``q``."""
    endpoint = track.endpoint()
    track.broker_process(endpoint)
    client = track.client(endpoint, **options)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    return client


def test_publish_nowait_in_full_batches_leaves_the_background_thread_asleep(
        track: Tracker) -> None:
    client = _client(track, batch_messages=50, linger=0.05)
    ticks = _counting_ticks(client)
    futures = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:   # 20 lingers: it used to wake every one
        futures.extend(client.publish_nowait("t", b"x") for _ in range(50))
        time.sleep(0.001)   # pacing (a batch a millisecond): the broker keeps up
    woken = len(ticks)
    assert woken <= 10, f"the background thread woke {woken} times"   # heartbeats: 4
    ids = [future.result().message_id for future in futures]
    assert len(set(ids)) == len(futures)


def test_a_producers_full_frames_leave_the_background_thread_asleep(track: Tracker) -> None:
    client = _client(track, linger=0.05)
    ticks = _counting_ticks(client)
    with client.producer("t", batch_messages=50) as producer:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for _ in range(50):
                producer.offer(b"x")
            time.sleep(0.001)   # pacing, as above
        woken = len(ticks)
    assert woken <= 10, f"the background thread woke {woken} times"   # heartbeats: 4


def test_what_lingers_still_leaves_after_linger(track: Tracker) -> None:
    client = _client(track, batch_messages=1000, linger=0.05)
    started = time.monotonic()
    future = client.publish_nowait("t", b"alone")   # nobody flushes, nobody waits
    producer = client.producer("t", batch_messages=1000)
    producer.offer(b"offered")
    track.wait_until(future.done, 4.0, "the lingering publish sent and answered")
    assert future.result().deliveries == 1
    track.wait_until(lambda: client.stats().queues["q"].enqueued == 2, 4.0,
                     "the lingering frame sent")
    assert time.monotonic() - started < 4.0
    producer.close()
