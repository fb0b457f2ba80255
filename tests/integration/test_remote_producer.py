"""Client.producer: offers fill frames, full frames are pipelined, refusals are kept."""

from __future__ import annotations

from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout.errors import BrokenConnection
from fastfanout.wire.protocol import Opcode


def _setup(client: fastfanout.Client, **queue_settings: Tracker) -> None:
    client.create_topic("t")
    client.create_queue("q", **queue_settings)
    client.subscribe("t", "q")


def _bodies(client: fastfanout.Client) -> list[bytes]:
    bodies: list[bytes] = []
    while batch := client.receive("q", max_messages=1000):
        bodies += [m.body for m in batch]
        client.ack_batch([m.receipt for m in batch])
    return bodies


def _count_publishes(client: fastfanout.Client) -> list[int]:
    sent: list[int] = []

    def counted(opcode: int, payload: list[bytes]) -> None:
        if opcode == Opcode.PUBLISH:
            sent.append(opcode)

    client.connection.core.on_request = counted
    return sent


def test_offers_leave_in_full_frames_and_flush_sends_the_rest(track: Tracker,
                                                              endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    sent = _count_publishes(client)
    producer = client.producer("t", batch_messages=100, max_in_flight=2, linger=60)
    for n in range(250):
        producer.offer(b"m%d" % n)
    assert sent == [Opcode.PUBLISH] * 2          # two full frames left at once
    assert producer.offered == 250 and producer.pending == 250 - producer.published
    results = producer.flush()
    assert results is not None and len(results) == 50   # the last frame: the open one
    assert sent == [Opcode.PUBLISH] * 3
    assert producer.published == 250 and producer.pending == 0
    assert producer.flush() is None
    assert _bodies(client) == [b"m%d" % n for n in range(250)]


def test_frames_past_max_in_flight_wait_for_answers(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    with client.producer("t", batch_messages=10, max_in_flight=1, linger=60) as producer:
        for n in range(95):
            producer.offer(b"%d" % n)
            # with one frame in flight, every earlier frame has been answered
            assert producer.published >= (producer.offered // 10 - 1) * 10
    assert producer.published == 95                      # close() flushed
    with pytest.raises(fastfanout.Closed):
        producer.offer(b"late")
    assert _bodies(client) == [b"%d" % n for n in range(95)]


def test_a_refused_frame_is_kept_and_sent_again(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client, max_messages=15, overflow="reject")
    producer = client.producer("t", batch_messages=10, max_in_flight=1, linger=60)
    for n in range(10):
        producer.offer(b"a%d" % n)          # frame 1: accepted (10 of 15)
    for n in range(10):
        producer.offer(b"b%d" % n)          # frame 2 leaves; the broker refuses it...
    with pytest.raises(fastfanout.QueueFull):
        producer.flush()                    # ...and the next wait for answers says so
    assert producer.refused_frames == 1 and producer.pending == 10
    # while a refused frame is kept, offers flush first: still refused, body not added
    with pytest.raises(fastfanout.QueueFull):
        producer.offer(b"c0")
    assert producer.offered == 20 and producer.pending == 10
    assert _bodies(client)[:10] == [b"a%d" % n for n in range(10)]   # room again
    producer.offer(b"c0")                   # the kept frame leaves first
    producer.flush()
    assert producer.published == 21 and producer.pending == 0
    assert _bodies(client) == [b"b%d" % n for n in range(10)] + [b"c0"]


def test_refusal_of_a_frame_in_flight_surfaces_at_flush(track: Tracker,
                                                       endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    producer = client.producer("t", batch_messages=4, max_in_flight=8, linger=60)
    for n in range(4):
        producer.offer(b"x%d" % n)          # in flight...
    client.delete_topic("t")               # ...or refused, if the broker saw this first
    producer.offer(b"y")
    with pytest.raises(fastfanout.NotFound):
        producer.flush()
    client.create_topic("t")
    client.subscribe("t", "q")
    producer.flush()                        # kept frames, oldest first
    assert producer.pending == 0
    assert _bodies(client)[-1] == b"y"


def test_bad_producer_arguments_are_refused(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    with pytest.raises(fastfanout.NotFound):
        client.producer("missing")
    for options in ({"batch_messages": 0}, {"batch_bytes": -1}, {"max_in_flight": 1.5},
                    {"linger": -1.0}, {"linger": float("nan")}):
        with pytest.raises(fastfanout.InvalidArgument):
            client.producer("t", **options)
    producer = client.producer("t")
    with pytest.raises(fastfanout.InvalidArgument):
        producer.offer("not bytes")   # type: ignore[arg-type]
    assert producer.offered == 0 and producer.pending == 0


def test_closing_the_client_flushes_its_open_producers(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client, max_messages=5, overflow="reject")
    with fastfanout.connect(endpoint) as publisher:
        producer = publisher.producer("t")
        for n in range(3):
            producer.offer(b"open %d" % n)   # an open frame, never flushed by hand
    assert producer.published == 3
    assert _bodies(client) == [b"open 0", b"open 1", b"open 2"]
    # a refusal at close is raised, not dropped silently; the client is closed anyway
    publisher = track.client(endpoint)
    producer = publisher.producer("t", linger=60)
    for n in range(6):
        producer.offer(b"%d" % n)           # six into a queue of five: refused whole
    with pytest.raises(fastfanout.QueueFull):
        publisher.close()
    assert publisher.closed and producer.pending == 6
    assert _bodies(client) == []


def test_frames_survive_a_broker_restart(track: Tracker, endpoint: str) -> None:
    server = track.server(endpoint)
    client = track.client(endpoint, timeout=2.0)
    _setup(client)
    producer = client.producer("t", batch_messages=100, linger=60)
    for n in range(3):
        producer.offer(b"m%d" % n)              # the open frame
    server.stop()
    with pytest.raises(BrokenConnection):
        producer.flush()                         # kept, not lost
    assert producer.pending == 3 and producer.published == 0
    track.server(endpoint)                       # a fresh broker on the same endpoint
    _setup(client)                               # (the client reconnects by itself)
    producer.flush()                             # the kept frame, sent again
    assert producer.pending == 0 and producer.published == 3
    assert _bodies(client) == [b"m0", b"m1", b"m2"]


def test_a_frame_that_does_not_fill_leaves_after_linger(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    producer = client.producer("t", batch_messages=1000, linger=0.01)
    for n in range(3):
        producer.offer(b"m%d" % n)          # far from full, and no flush
    track.wait_until(lambda: client.stats().queues["q"].enqueued == 3,
                     what="the lingering frame")
    producer.offer(b"m3")                   # a new frame, sent after linger too
    track.wait_until(lambda: client.stats().queues["q"].enqueued == 4,
                     what="the second lingering frame")
    assert producer.flush() is not None     # answers read: counted as published
    assert producer.published == 4 and producer.pending == 0
    assert _bodies(client) == [b"m0", b"m1", b"m2", b"m3"]


def test_lingering_frames_and_full_frames_interleave_in_order(track: Tracker,
                                                             endpoint: str) -> None:
    """Offers go on after the background thread sent a lingering frame: nothing is lost
    or reordered."""
    track.server(endpoint)
    client = track.client(endpoint, linger=0.001)
    _setup(client)
    producer = client.producer("t", batch_messages=700, linger=0.0)
    for burst in range(5):
        for n in range(burst * 1000, burst * 1000 + 1000):
            producer.offer(b"%d" % n)       # a full frame of 700 leaves, 300 stay open
        expected = 1000 * (burst + 1)
        track.wait_until(lambda expected=expected: client.stats().queues["q"].enqueued
                         == expected, what="the lingering part of the burst")
    producer.close()
    assert producer.published == 5000 and producer.pending == 0
    assert _bodies(client) == [b"%d" % n for n in range(5000)]


def test_linger_sends_racing_a_tight_offer_loop(track: Tracker, endpoint: str) -> None:
    """Thread switches every 10 µs: the background thread takes frames in the middle of
    the offers; every body still arrives once, in order."""
    import sys

    track.server(endpoint)
    client = track.client(endpoint, linger=0.0002)
    _setup(client)
    count = 50_000
    producer = client.producer("t", batch_messages=700, linger=0.0)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        for n in range(count):
            producer.offer(b"%d" % n)
    finally:
        sys.setswitchinterval(interval)
    producer.close()
    assert producer.published == count and producer.pending == 0
    assert _bodies(client) == [b"%d" % n for n in range(count)]


def test_a_frame_refused_for_a_message_too_large_is_dropped_once(track: Tracker,
                                                                endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client, max_message_size=100)
    producer = client.producer("t", batch_messages=2, max_in_flight=1, linger=60)
    producer.offer(b"a")
    producer.offer(b"x" * 101)               # the frame leaves; the broker refuses it
    with pytest.raises(fastfanout.MessageTooLarge):
        producer.flush()                     # raised once...
    assert producer.refused_frames == 1 and producer.dropped_frames == 1
    assert producer.pending == 0
    for body in (b"b", b"c", b"d"):          # ...and the producer goes on
        producer.offer(body)
    producer.flush()
    producer.close()
    client.close()                           # nothing left to raise
    assert producer.published == 3


def test_a_frame_leaves_before_a_body_would_take_it_past_the_request_limit(
        track: Tracker, endpoint: str) -> None:
    # two bodies of 40 KiB fit a broker's 64 KiB requests one at a time, not together:
    # until 2026-12-05 the frame of both was refused and dropped (RequestTooLarge once)
    track.server(endpoint, max_request_bytes=64 * 1024)
    client = track.client(endpoint)
    _setup(client)
    producer = client.producer("t", batch_messages=2, max_in_flight=1, linger=60)
    producer.offer(b"a" * (40 * 1024))
    producer.offer(b"b" * (40 * 1024))   # the frame of "a" leaves first
    producer.offer(b"c")
    producer.flush()
    producer.close()
    assert producer.dropped_frames == 0
    assert _bodies(client) == [b"a" * (40 * 1024), b"b" * (40 * 1024), b"c"]


def test_a_body_over_the_request_limit_is_refused_at_offer(track: Tracker,
                                                          endpoint: str) -> None:
    track.server(endpoint, max_request_bytes=64 * 1024)
    client = track.client(endpoint)
    _setup(client)
    producer = client.producer("t", batch_messages=3, max_in_flight=1, linger=60)
    producer.offer(b"a")
    for body in (b"x" * (65 * 1024), bytearray(65 * 1024), memoryview(b"y" * (65 * 1024))):
        with pytest.raises(fastfanout.RequestTooLarge, match="max_request_bytes"):
            producer.offer(body)             # never added: the frame is untouched
    assert producer.offered == 1 and producer.pending == 1
    assert producer.refused_frames == 0
    producer.offer(bytearray(b"b"))
    producer.flush()
    producer.close()
    assert _bodies(client) == [b"a", b"b"]


def test_a_producer_whose_topic_was_deleted_discards_its_messages_and_closes(
        track: Tracker, endpoint: str) -> None:
    # until 2026-12-07 close() raised NotFound at every call and the producer stayed
    # open: no way to drop messages meant for a topic deleted on purpose
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    producer = client.producer("t", batch_messages=4, max_in_flight=2, linger=60)
    for n in range(3):
        producer.offer(b"a%d" % n)
    producer.flush()
    client.delete_topic("t")
    for n in range(10):                     # two frames leave (and are refused)...
        try:
            producer.offer(b"x%d" % n)
        except fastfanout.NotFound:
            pass                             # ...and the offers after them flush first
    with pytest.raises(fastfanout.NotFound):
        producer.close()
    assert producer.pending > 0
    pending = producer.pending
    assert producer.discard() == pending
    assert producer.pending == 0 and producer.discarded == pending
    producer.close()                        # nothing left: it closes
    with pytest.raises(fastfanout.Closed):
        producer.offer(b"late")
    assert producer.published == 3
    client.close()                          # no refusal left to raise


def test_a_discard_keeps_what_the_broker_accepted(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    _setup(client)
    producer = client.producer("t", batch_messages=2, max_in_flight=8, linger=60)
    for n in range(5):
        producer.offer(b"m%d" % n)           # two frames in flight, one message open
    assert producer.discard() == 1           # in flight: answered, published
    assert producer.published == 4
    producer.offer(b"after")
    producer.close()
    assert _bodies(client) == [b"m0", b"m1", b"m2", b"m3", b"after"]
