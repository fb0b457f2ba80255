"""The blocking client's background thread stays asleep while callers keep frames full
(issue 15): it wakes only for what lingers, heartbeats, and replies nobody reads.

The broker is a process of its own: a server thread here would take the GIL from the
publishing caller for long enough to let its batches linger.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any as Tracker

from fastfanout.client.blocking import BUSY_PATIENCE
from fastfanout.client.futures import REPLY_POLL

LINGER = 0.01
"""The linger of the clients filling full frames: a thread that woke every linger, as
before issue 15, wakes 100 times in the second they fill them, far above the wake-ups
due (``_wakes_accounted_for``: 5 on an idle machine, tens on a loaded one)."""

SLACK = 6
"""Wake-ups allowed beyond those accounted for (a heartbeat's and a flush's edges)."""


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


def _paced(fill: Callable[[], None], seconds: float = 1.0) -> list[float]:
    """Fill and send a full frame, pause a millisecond, for ``seconds`` (pacing: the broker
    keeps up); returns the times the frames had left, the caller's last use of the
    connection each time (the first: when it began)."""
    left = [time.monotonic()]
    deadline = left[0] + seconds
    while left[-1] < deadline:
        fill()
        left.append(time.monotonic())
        time.sleep(0.001)
    return left


def _wakes_accounted_for(client: Tracker, left: list[float]) -> int:
    """The background thread's wake-ups due while a caller sent the full frames ``left``.

    A heartbeat every ``heartbeat_interval``; while the caller is away from the
    connection with requests in flight, a reply poll each ``REPLY_POLL`` (pending
    futures must complete with nobody calling); and a frame the caller left open for
    ``LINGER`` (descheduled while filling it). On an idle machine the caller is never
    away that long (a frame every millisecond or so); on a loaded one its pauses
    stretch, or it is descheduled, and the thread rightly wakes: counted here from the
    gaps between the frames, never from a guess at the machine's speed.
    """
    elapsed = time.monotonic() - left[0]
    heartbeats = int(elapsed / client.connection.core.heartbeat_interval) + 1
    gaps = [later - earlier for earlier, later in itertools.pairwise(left)]
    polls = sum(int(gap / REPLY_POLL) for gap in gaps)
    lingers = sum(gap >= LINGER for gap in gaps)
    return heartbeats + polls + lingers


def test_publish_nowait_in_full_batches_leaves_the_background_thread_asleep(
        track: Tracker) -> None:
    client = track.fanout_client(batch_messages=50, linger=LINGER)
    ticks = _counting_ticks(client)
    futures: list[Tracker] = []

    def fill() -> None:
        futures.extend(client.publish_nowait("t", b"x") for _ in range(50))

    left = _paced(fill)   # 100 lingers: it used to wake every one
    woken = len(ticks)
    accounted = _wakes_accounted_for(client, left)
    assert woken <= accounted + SLACK, (
        f"the background thread woke {woken} times, {accounted} of them due")
    ids = [future.result().message_id for future in futures]
    assert len(set(ids)) == len(futures)


def test_a_producers_full_frames_leave_the_background_thread_asleep(track: Tracker) -> None:
    client = track.fanout_client(linger=LINGER)
    ticks = _counting_ticks(client)
    with client.producer("t", batch_messages=50) as producer:
        def fill() -> None:
            for _ in range(50):
                producer.offer(b"x")

        left = _paced(fill)
        woken = len(ticks)
        accounted = _wakes_accounted_for(client, left)
    assert woken <= accounted + SLACK, (
        f"the background thread woke {woken} times, {accounted} of them due")


def test_what_lingers_still_leaves_after_linger(track: Tracker) -> None:
    client = track.fanout_client(batch_messages=1000, linger=0.05)
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


def test_a_busy_lock_is_left_to_its_holder_then_waited_for(track: Tracker) -> None:
    """Due while a caller holds the lock with nothing lingering (here: a reply to read),
    the thread looks again later (it used to wait for the lock at once, and then every
    call of the holder waited its turn); once the lock has been busy for
    ``BUSY_PATIENCE`` it waits for it. A batch past its linger it claims at once."""
    client = track.fanout_client(batch_messages=1000, linger=0.002)
    connection = client.connection
    answered = client.publish_batch_nowait("t", [b"sent"])   # its answer: read in 5 ms
    with connection.lock:   # a caller inside a call, for less than the patience
        track.wait_until(lambda: connection.busy_retries >= 2, 4.0,
                         "the background thread looked at the busy lock again")
    track.wait_until(answered.done, 4.0, "the answer read once the lock was free")
    assert [result.deliveries for result in answered.result()] == [1]

    answered = client.publish_batch_nowait("t", [b"sent"])
    retries = connection.busy_retries
    with connection.lock:   # past the patience: the thread waits its turn
        time.sleep(BUSY_PATIENCE * 6)
        looked = connection.busy_retries - retries
    # it stopped looking once the patience ran out (it would look every reply poll else)
    assert 1 <= looked <= BUSY_PATIENCE / REPLY_POLL + SLACK, looked
    track.wait_until(answered.done, 4.0, "the answer read once the lock was free")

    retries = connection.busy_retries
    with connection.lock:   # a batch lingers: claimed at once, no looking again
        future = client.publish_nowait("t", b"lingering")
        time.sleep(BUSY_PATIENCE * 2)
        assert connection.busy_retries == retries
        assert not future.done()
    track.wait_until(future.done, 4.0, "the lingering publish sent once the lock was free")
    assert future.result().deliveries == 1
