"""``publish_nowait`` of the blocking client paced to the broker: ``max_in_flight``."""

from __future__ import annotations

import threading
from typing import Any
from typing import Any as Tracker

import pytest

from fastfanout.errors import InvalidArgument
from fastfanout.wire.protocol import Opcode


def _hold_queue(track: Tracker, **client_options: object) -> tuple[Tracker, Tracker, list[int]]:
    """(server, publisher, sent): a topic into a ``hold`` queue of 20 messages; ``sent``
    gets the opcode of every request the publisher queues."""
    server = track.server()
    admin = track.client(server.endpoint)
    admin.create_topic("t")
    admin.create_queue("q", max_messages=20, overflow="hold")
    admin.subscribe("t", "q")
    publisher = track.client(server.endpoint, batch_messages=10, **client_options)
    sent: list[int] = []
    publisher.connection.core.on_request = lambda opcode, payload: sent.append(opcode)
    return server, publisher, sent


def test_a_publishing_loop_waits_past_max_in_flight_unanswered_batches(
        track: Tracker) -> None:
    server, publisher, sent = _hold_queue(track, max_in_flight=2)
    futures: list[Any] = []
    loop = threading.Thread(target=lambda: futures.extend(
        publisher.publish_nowait("t", b"%d" % i) for i in range(100)))
    loop.start()
    # Batches 1-2 fill the queue, 3-5 are held by the broker; the call that sent batch
    # 5 (three unanswered) waits for the answer of batch 3, which needs room: no sixth
    # batch leaves until a consumer acks.
    consumer = track.client(server.endpoint)
    track.wait_until(lambda: consumer.server_stats()["held"] == 3, what="3 held")
    assert sent.count(Opcode.PUBLISH) == 5
    assert loop.is_alive() and publisher.connection.in_flight_waits >= 1
    received: list[bytes] = []
    while len(received) < 100:
        got = consumer.receive("q", max_messages=10, wait=5.0)
        assert got, "the held publishes went through"
        received += [m.body for m in got]
        consumer.ack_batch([m.receipt for m in got])
    loop.join(10.0)
    assert not loop.is_alive()
    publisher.flush()
    assert received == [b"%d" % i for i in range(100)]   # in order, none lost
    assert [f.result(timeout=5.0).deliveries for f in futures] == [1] * 100
    assert sent.count(Opcode.PUBLISH) == 10
    assert publisher.connection.in_flight_waits >= 1


def test_max_in_flight_zero_sends_every_batch_at_once(track: Tracker) -> None:
    _, publisher, sent = _hold_queue(track, max_in_flight=0)
    futures = [publisher.publish_nowait("t", b"%d" % i) for i in range(100)]
    assert sent.count(Opcode.PUBLISH) == 10 and publisher.connection.in_flight_waits == 0
    track.wait_until(lambda: publisher.server_stats()["held"] == 8, what="8 held")
    assert not futures[-1].done()


@pytest.mark.parametrize("value", [-1, 1.5, "8", None])
def test_a_bad_max_in_flight_is_refused(track: Tracker, value: object) -> None:
    server = track.server()
    with pytest.raises(InvalidArgument, match="max_in_flight"):
        track.client(server.endpoint, max_in_flight=value)


def test_futures_handed_out_again_never_reach_a_caller_that_kept_one(track: Tracker) -> None:
    """The gate hands out a future again only once nothing else refers to it."""
    server = track.server()
    client = track.client(server.endpoint, batch_messages=500)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    kept: dict[int, Any] = {}
    called: list[tuple[int, int]] = []
    for i in range(20_000):
        future = client.publish_nowait("t", b"%d" % i)
        if i % 997 == 0:
            kept[i] = future
        if i % 1999 == 0:   # a callback keeps its future alive through the closure
            future.add_done_callback(lambda f, i=i: called.append((i, f.result().message_id)))
    client.flush()
    assert len({id(future) for future in kept.values()}) == len(kept)
    ids = [kept[i].result(timeout=5.0).message_id for i in sorted(kept)]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    track.wait_until(lambda: len(called) == len(range(0, 20_000, 1999)), what="callbacks")
    assert sorted(i for i, _ in called) == list(range(0, 20_000, 1999))
    messages = client.receive("q", max_messages=10, wait=1.0)
    assert messages and messages[0].body == b"0"
    # a message's id and its future's: the same publish (the first of each kind)
    assert kept[0].result().message_id == messages[0].id
    assert dict(called)[0] == messages[0].id
