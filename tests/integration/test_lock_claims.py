"""Calls from one thread are not held up by another thread of the same client waiting in
``recv`` with its lock (a consumer's iteration of an idle queue): they wake it and take
the lock (``Connection.claim`` / ``held``), the native ``publish_nowait`` too, and so does
the background thread for a batch or frame past its linger.

Before, each ``publish_nowait`` waited out the other thread's ``recv`` (a whole wait, a
second and more, per call), as did a producer's full frame and a lingering batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any as Tracker

import pytest

IDLE_WAIT = 3.0
"""The idle consumer's ``timeout``: its thread waits in ``recv`` this long at a time (up to
the heartbeat interval); a call that waited it out would take seconds."""

PROMPT = 1.5
"""Seconds the calls below take at most (milliseconds when nothing holds them up)."""


def _client(track: Tracker, **options: object) -> Tracker:
    client = track.fanout_client(**options)
    client.create_queue("idle")
    return client


@contextmanager
def _idle_consumers(track: Tracker, client: Tracker) -> Iterator[None]:
    """Two threads of ``client`` iterating empty queues: by turns, one of them holds the
    lock in ``recv`` (a tenth of a second at a time), the other waits for it."""
    stop = threading.Event()
    started = [threading.Event() for _ in range(2)]

    def iterate(index: int) -> None:
        while not stop.is_set():
            consumer = client.consume("idle", timeout=IDLE_WAIT)
            started[index].set()
            for _ in consumer:
                pass

    threads = [threading.Thread(target=iterate, args=(index,), daemon=True)
               for index in range(2)]
    for thread in threads:
        thread.start()
    assert all(event.wait(10.0) for event in started)
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(IDLE_WAIT + 5.0)
            assert not thread.is_alive()


def test_publish_nowait_is_not_held_up_by_a_thread_waiting_in_recv(track: Tracker) -> None:
    client = _client(track, batch_messages=5)
    with _idle_consumers(track, client):
        started = time.monotonic()
        futures = [client.publish_nowait("t", b"%d" % index) for index in range(50)]
        client.flush()
        ids = [future.result().message_id for future in futures]
        elapsed = time.monotonic() - started
    assert len(set(ids)) == 50
    assert elapsed < PROMPT, f"50 publishes took {elapsed:.2f} s"


def test_a_lingering_batch_leaves_while_a_thread_waits_in_recv(track: Tracker) -> None:
    client = _client(track, batch_messages=1000, linger=0.005)
    with _idle_consumers(track, client):
        started = time.monotonic()
        future = client.publish_nowait("t", b"lingers")   # nobody flushes or waits
        track.wait_until(future.done, 10.0, "the lingering batch sent and answered")
        elapsed = time.monotonic() - started
    assert future.result().deliveries == 1
    assert elapsed < PROMPT, f"the batch left after {elapsed:.2f} s"


def test_a_producers_frames_are_not_held_up_by_a_thread_waiting_in_recv(
        track: Tracker) -> None:
    client = _client(track, linger=0.005)
    with _idle_consumers(track, client):
        started = time.monotonic()
        with client.producer("t", batch_messages=10, max_in_flight=1) as producer:
            for index in range(50):   # full frames, each waiting for the last answer
                producer.offer(b"%d" % index)
            producer.offer(b"lingers")   # a frame left open: sent after linger
            track.wait_until(lambda: client.stats().queues["q"].enqueued == 51, 10.0,
                             "the lingering frame sent")
        elapsed = time.monotonic() - started
    assert elapsed < PROMPT * 2, f"the frames took {elapsed:.2f} s"


def test_a_consumer_thread_gets_its_frames_while_another_waits_in_recv(
        track: Tracker) -> None:
    """The frames of one consumer, read by another consumer's thread, reach it at once: a
    thread waiting for the lock whose frames have come is let in (it used to wait whole
    ``recv`` waits of the other thread, tenths of a second a delivery)."""
    client = _client(track)
    publisher = track.client(client.endpoint)
    got = threading.Semaphore(0)
    stop = threading.Event()

    def receive() -> None:
        while not stop.is_set():
            for message in client.consume("q", timeout=IDLE_WAIT):
                message.ack()
                got.release()

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    with _idle_consumers(track, client):
        publisher.publish("t", b"first")   # the consumer is in place
        assert got.acquire(timeout=10.0)
        started = time.monotonic()
        for index in range(20):
            publisher.publish("t", b"%d" % index)
            assert got.acquire(timeout=10.0)
        elapsed = time.monotonic() - started
        stop.set()
        publisher.publish("t", b"last")
    thread.join(IDLE_WAIT + 5.0)
    assert elapsed < PROMPT, f"20 deliveries took {elapsed:.2f} s"


def test_calls_of_a_third_thread_are_not_held_up_by_two_waiting_in_recv(
        track: Tracker) -> None:
    client = _client(track)
    with _idle_consumers(track, client):
        slow = 0
        for _ in range(200):
            started = time.monotonic()
            client.stats()
            slow += time.monotonic() - started > 0.09   # a recv wait is 0.1 s
    # the bug held up 5-6 % of them (10 or more of 200); a loaded machine (the suite on
    # two cores) slows a call past 0.09 s now and then by itself
    assert slow <= 5, f"{slow} of 200 calls waited out a recv"


def test_add_done_callback_is_not_held_up_by_threads_waiting_in_recv(
        track: Tracker) -> None:
    client = _client(track)
    with _idle_consumers(track, client):
        futures = [client.publish_nowait("t", b"x"), client.publish_batch_nowait("t", [b"y"])]
        seen: list[object] = []
        slow = 0
        for future in futures * 5:
            started = time.monotonic()
            future.add_done_callback(seen.append)
            slow += time.monotonic() - started > 0.09   # a recv wait is 0.1 s
        track.wait_until(lambda: len(seen) == 10, 10.0, "the callbacks ran")
    assert slow <= 1, f"{slow} of 10 add_done_callback calls waited out a recv"


class _InterruptedLock:
    """The client's lock, but an interrupt (Ctrl-C) lands as soon as a waiting acquire
    has taken it."""

    def __init__(self, lock: Tracker) -> None:
        self.lock = lock

    free = False
    """True: the lock is free, and the interrupt lands as the first try takes it."""

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not blocking and not self.free:
            return False   # held by another thread: the caller waits
        self.lock.acquire()
        raise KeyboardInterrupt

    def release(self) -> None:
        self.lock.release()

    def held_here(self) -> bool:
        return bool(self.lock.held_here())


class _NoFrames:
    """A consumer's state with no frames read for it."""

    batches: list[bytes] = []
    error = None
    closed = False


def test_an_interrupt_once_the_lock_is_taken_leaves_it_free(track: Tracker) -> None:
    client = _client(track)
    connection = client.connection
    lock = connection.lock
    for free, call in ((False, connection.claim), (True, connection.claim),
                       (False, lambda: connection.pump(0.0, consumer=_NoFrames()))):
        connection.lock = _InterruptedLock(lock)
        connection.lock.free = free
        try:
            with pytest.raises(KeyboardInterrupt):
                call()
        finally:
            connection.lock = lock
        assert not lock.held_here()   # it stayed held: every other thread of it hung
    assert client.stats().queues["q"].enqueued == 0   # the client goes on
