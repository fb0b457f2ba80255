"""A held publish is not run again while its queue is still short of room."""

from __future__ import annotations

from typing import Any as Tracker

import pytest

from fastfanout import QueueFull


def test_acks_that_free_too_little_do_not_rerun_a_held_batch(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q", max_messages=10, overflow="hold")
    client.subscribe("t", "q")
    client.publish_batch("t", [b"%d" % i for i in range(10)])
    publisher = track.client(server.endpoint)
    held = publisher.publish_batch_nowait("t", [b"%d" % i for i in range(10, 20)])
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="the batch held")
    for _ in range(9):   # each ack makes room for one message: the batch needs ten
        message = client.receive("q", wait=5.0)[0]
        client.ack(message.receipt)
        assert not held.done()
    message = client.receive("q", wait=5.0)[0]
    client.ack(message.receipt)   # room for ten: it goes through
    assert len(held.result(timeout=5.0)) == 10
    # held when it came, then run again only once ten had left (before: after every ack)
    assert client.server_stats()["hold_reruns"] == 1
    # held and then published: never refused, so not counted as rejected
    assert client.stats().queues["q"].rejected == 0


def test_a_held_publish_that_times_out_counts_its_messages_rejected_once(
        track: Tracker) -> None:
    server = track.server(hold_timeout=0.3)
    client = track.client(server.endpoint)
    client.create_queue("q", max_messages=1, overflow="hold")
    client.send("q", b"fills it")
    for attempt in range(1, 4):
        with pytest.raises(QueueFull):
            client.send("q", b"no room")
        assert client.stats().queues["q"].rejected == attempt
    stats = client.server_stats()
    assert (stats["held_requests"], stats["hold_timeouts"]) == (3, 3)
    assert client.stats().queues["q"].messages == 1


def test_close_waits_for_every_held_publish_whatever_the_first_refusal(
        track: Tracker) -> None:
    # close() used to stop waiting at the first refused publish: the publishes still
    # held were never answered (their futures never done) and vanished uncounted
    server = track.server(hold_timeout=0.5)
    client = track.client(server.endpoint)
    client.create_queue("q", max_messages=1000, overflow="hold")
    for _ in range(2):
        publisher = track.client(server.endpoint, max_in_flight=8)
        futures = [publisher.send_nowait("q", b"%d" % n) for n in range(10_000)]
        publisher.close()
        assert all(future.done() for future in futures)   # each answered, none forgotten
    stats = client.stats().queues["q"]
    # batches of 1,000 go whole or not at all: the first fills the queue
    assert (stats.messages, stats.rejected) == (1000, 19_000)
