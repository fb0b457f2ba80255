"""Publishes held by the server while a ``hold`` queue is full (fastfanout.server.holds)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any as Tracker

import pytest

from fastfanout import NotFound, QueueFull, ServerStopping, aio


def _full_hold_queue(track: Tracker, **server_options: object) -> tuple[Tracker, Tracker]:
    server = track.server(**server_options)
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q", max_messages=2, overflow="hold")
    client.subscribe("t", "q")
    client.publish_batch("t", [b"0", b"1"])
    return server, client


def test_held_publishes_go_through_in_order_as_acks_make_room(track: Tracker) -> None:
    server, client = _full_hold_queue(track)
    publisher = track.client(server.endpoint)
    first = publisher.publish_batch_nowait("t", [b"2"])
    second = publisher.publish_batch_nowait("t", [b"3", b"4"])
    publisher.flush()
    track.wait_until(lambda: client.server_stats()["held"] == 2, what="both held")
    assert not first.done() and not second.done()
    for expected in ([b"0", b"1"], [b"2"], [b"3", b"4"]):
        got = client.receive("q", max_messages=10, wait=5.0)
        assert [m.body for m in got] == expected
        client.ack_batch([m.receipt for m in got])
        if expected == [b"0", b"1"]:
            assert len(first.result(timeout=5.0)) == 1
        if expected == [b"2"]:
            assert len(second.result(timeout=5.0)) == 2
    stats = client.server_stats()
    assert (stats["held"], stats["held_requests"], stats.get("hold_timeouts", 0)) == (0, 2, 0)


def test_a_held_publish_times_out_with_queue_full(track: Tracker) -> None:
    _, client = _full_hold_queue(track, hold_timeout=0.2)
    with pytest.raises(QueueFull, match="overflow is hold") as caught:
        client.publish("t", b"late")
    assert caught.value.hold is True
    assert client.server_stats()["hold_timeouts"] == 1
    assert client.stats().queues["q"].messages == 2


def test_hold_timeout_zero_answers_at_once(track: Tracker) -> None:
    _, client = _full_hold_queue(track, hold_timeout=0)
    with pytest.raises(QueueFull) as caught:
        client.publish("t", b"late")
    assert caught.value.hold is True
    assert "held_requests" not in client.server_stats()


def test_other_sessions_are_not_held_up(track: Tracker) -> None:
    server, client = _full_hold_queue(track)
    client.create_topic("free")
    client.create_queue("other")
    client.subscribe("free", "other")
    publisher = track.client(server.endpoint)
    held = publisher.publish_nowait("t", b"2")
    publisher.flush()
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="held")
    assert client.publish("free", b"x").deliveries == 1   # another session goes on
    assert not held.done()


def test_stopping_answers_held_publishes(track: Tracker) -> None:
    server, _ = _full_hold_queue(track)
    publisher = track.client(server.endpoint)
    held = publisher.publish_nowait("t", b"2")
    publisher.flush()
    track.wait_until(lambda: server.counters["held_requests"] == 1, what="held")
    server.stop()
    with pytest.raises(ServerStopping):
        held.result(timeout=5.0)


def test_server_refuses_a_bad_hold_timeout_or_push_batch(track: Tracker) -> None:
    from fastfanout import InvalidArgument
    from fastfanout.server.loop import Server

    for bad in (-1, float("nan"), "1"):
        with pytest.raises(InvalidArgument):
            Server(track.endpoint(), hold_timeout=bad)   # type: ignore[arg-type]
    for bad_batch in (0, 10_001, 1.0):
        with pytest.raises(InvalidArgument, match="push_batch"):
            Server(track.endpoint(), push_batch=bad_batch)   # type: ignore[arg-type]


def test_a_blocking_publish_outlasts_the_client_timeout_while_held(track: Tracker) -> None:
    # The client's default wait stretches by the broker's hold_timeout (told in HELLO),
    # and heartbeats keep flowing: a long hold is not a broken connection.
    # a heartbeat timeout a loaded machine keeps (its heartbeats may lag a second or
    # two), still below the hold the publish waits out
    server, client = _full_hold_queue(track, heartbeat_interval=0.1, heartbeat_timeout=3.0)
    publisher = track.client(server.endpoint, timeout=2.0)
    assert publisher.info["hold_timeout"] == 30.0
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(publisher.publish("t", b"2")))
    thread.start()
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="held")
    thread.join(6.0)          # three times the client's timeout, twice the heartbeat timeout
    assert thread.is_alive() and not result
    got = client.receive("q", max_messages=2)
    client.ack_batch([m.receipt for m in got])
    thread.join(10.0)
    assert not thread.is_alive() and len(result) == 1
    assert result[0].deliveries == 1   # type: ignore[attr-defined]
    assert server.counters["sessions_expired"] == 0


def test_asyncio_publish_waits_out_a_hold(track: Tracker) -> None:
    server, client = _full_hold_queue(track)

    async def publish_then_check() -> int:
        async with aio.connect(server.endpoint, timeout=2.0) as publisher:
            task = asyncio.ensure_future(publisher.publish("t", b"2"))
            await asyncio.sleep(4.0)          # twice its timeout, still held
            assert not task.done()
            got = client.receive("q", max_messages=2)
            client.ack_batch([m.receipt for m in got])
            return (await asyncio.wait_for(task, 10.0)).deliveries

    assert asyncio.run(publish_then_check()) == 1


@pytest.mark.parametrize("change", ["unsubscribe", "filter_out", "delete_topic"])
def test_a_held_publish_is_answered_at_once_when_its_full_queue_stops_being_a_target(
        track: Tracker, change: str) -> None:
    # It waited for room in a queue it no longer went to, until hold_timeout (30 s).
    server, client = _full_hold_queue(track)
    publisher = track.client(server.endpoint)
    future = publisher.publish_batch_nowait("t", [b"2"])
    publisher.flush()
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="held")
    if change == "unsubscribe":
        client.unsubscribe(1)
    elif change == "filter_out":
        client.set_filter_policy(1, {"kind": ["never"]})
    else:
        client.delete_topic("t")
    if change == "delete_topic":
        with pytest.raises(NotFound):
            future.result(timeout=5.0)
    else:
        (result,) = future.result(timeout=5.0)
        assert result.deliveries == 0
    assert client.server_stats()["held"] == 0
    assert client.stats().queues["q"].messages == 2


def test_a_held_publish_is_no_refusal_of_its_subscription_until_it_times_out(
        track: Tracker) -> None:
    server, client = _full_hold_queue(track, hold_timeout=0.5)
    sid = next(iter(client.list_subscriptions()))
    publisher = track.client(server.endpoint)
    held = publisher.publish_batch_nowait("t", [b"2"])
    publisher.flush()
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="held")
    counters = client.stats().subscriptions[sid]
    assert (counters.delivered, counters.dropped["rejected"]) == (2, 0)
    assert client.stats().queues["q"].rejected == 0
    with pytest.raises(QueueFull):
        held.result(timeout=5.0)
    # Timed out, it is refused once: on the queue and on its subscription alike.
    assert client.stats().queues["q"].rejected == 1
    assert client.stats().subscriptions[sid].dropped["rejected"] == 1


def _pipelined(publisher: Tracker, body: bytes) -> Tracker:
    """A publish of ``body`` sent at once, its answer not waited for."""
    future = publisher.publish_batch_nowait("t", [body])
    publisher.flush()
    return future


def test_a_session_holds_at_most_max_held_bytes(track: Tracker) -> None:
    # Until 2026-12-05 a client that pipelined publishes to a full hold queue made the
    # broker keep every one of them, however many: its memory grew without bound.
    server, client = _full_hold_queue(track, max_held_bytes=1)
    publisher = track.client(server.endpoint, max_in_flight=0)   # waits for no answer
    first = _pipelined(publisher, b"2")   # a session's first is held, whatever its size
    track.wait_until(lambda: client.server_stats()["held"] == 1, what="the first held")
    size = client.server_stats()["held_bytes"]
    assert size > 1
    second = _pipelined(publisher, b"3")   # one over
    with pytest.raises(QueueFull, match="max_held_bytes=1") as caught:
        second.result(timeout=5.0)
    assert caught.value.hold is True and not first.done()
    stats = client.server_stats()
    assert (stats["hold_refused"], stats["held"], stats["held_bytes"]) == (1, 1, size)
    assert client.stats().queues["q"].messages == 2   # nothing of the refused one
    got = client.receive("q", max_messages=10, wait=5.0)
    client.ack_batch([m.receipt for m in got])
    assert len(first.result(timeout=5.0)) == 1
    assert [m.body for m in client.receive("q", max_messages=10, wait=5.0)] == [b"2"]
    assert client.server_stats()["held_bytes"] == 0

    # exactly at the limit: two of that size are held, a third is refused
    server, client = _full_hold_queue(track, max_held_bytes=2 * size)
    publisher = track.client(server.endpoint, max_in_flight=0)
    held = [_pipelined(publisher, body) for body in (b"4", b"5")]
    track.wait_until(lambda: client.server_stats()["held"] == 2, what="two held")
    with pytest.raises(QueueFull, match="max_held_bytes"):
        _pipelined(publisher, b"6").result(timeout=5.0)
    assert client.server_stats()["held_bytes"] == 2 * size
    assert not any(future.done() for future in held)


@pytest.mark.parametrize("bad", [0, -1, 1.5, float("nan"), True, "1", None, 2**31 * 1.0])
def test_server_refuses_a_bad_max_held_bytes(track: Tracker, bad: object) -> None:
    from fastfanout import InvalidArgument
    from fastfanout.server.loop import Server

    with pytest.raises(InvalidArgument, match="max_held_bytes"):
        Server(track.endpoint(), max_held_bytes=bad)   # type: ignore[arg-type]
