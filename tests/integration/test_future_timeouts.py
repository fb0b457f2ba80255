"""A caller's timeout on a blocking client's publish future ends that wait only."""

from __future__ import annotations

from typing import Any as Tracker

import pytest

from fastfanout import CallTimeout


def _held(track: Tracker) -> tuple[Tracker, Tracker]:
    """A consumer client and a publisher whose publishes to "t" are held (full queue)."""
    server = track.server(hold_timeout=30)
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q", max_messages=2, overflow="hold")
    client.subscribe("t", "q")
    client.publish_batch("t", [b"0", b"1"])
    return client, track.client(server.endpoint)


def _make_room(client: Tracker) -> list[bytes]:
    """Receive and ack what the queue holds (the held publishes then go in)."""
    got = client.receive("q", max_messages=10, wait=5.0)
    client.ack_batch([m.receipt for m in got])
    return [m.body for m in got]


def test_a_short_wait_on_a_future_times_out_and_leaves_it_pending(track: Tracker) -> None:
    client, publisher = _held(track)
    held = publisher.publish_nowait("t", b"2")
    batch = publisher.publish_batch_nowait("t", [b"3"])
    publisher.flush()
    track.wait_until(lambda: client.server_stats()["held"] == 2, what="both held")
    for wait in (0, 0.05):
        with pytest.raises(CallTimeout):
            held.result(wait)
        with pytest.raises(TimeoutError):          # concurrent.futures' class too
            batch.result(wait)
    with pytest.raises(CallTimeout):
        held.exception(0.01)                       # raised, not returned
    with pytest.raises(CallTimeout):
        batch.exception(0)
    assert not held.done() and not batch.done()
    # the connection was left alone: the futures still complete, each publish once
    assert _make_room(client) == [b"0", b"1"]
    assert held.result(timeout=5.0).deliveries == 1
    assert len(batch.result(timeout=5.0)) == 1
    assert held.exception(0) is None
    assert _make_room(client) == [b"2", b"3"]     # each publish stored once

