"""Over the wire too, a message due after its queue's retention is refused, not dropped."""

from __future__ import annotations

import time
from typing import Any as Tracker

import pytest

from fastfanout import InvalidArgument


def test_the_server_refuses_a_schedule_past_retention(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    with pytest.raises(InvalidArgument, match=r"delay=120.0 s .*retention=60.0 s"):
        client.create_queue("never", delay=120.0, retention=60.0)
    client.create_topic("t")
    client.create_queue("long", retention=3600.0)
    client.create_queue("short", retention=60.0)
    client.subscribe("t", "long")
    client.subscribe("t", "short")
    with pytest.raises(InvalidArgument, match=r"'short' .*retention=60 s"):
        client.publish("t", b"m", deliver_at=time.time() + 600.0)
    # (a delay travels as a deliver_at: 60.0 would arrive a little less than 60 s ahead)
    future = client.send_nowait("short", b"m", delay=61.0)
    with pytest.raises(InvalidArgument, match="retention=60"):
        client.flush()
        future.result()
    assert client.list_queues() == ["long", "short"]
    assert {name: q.enqueued for name, q in client.stats().queues.items()} == {
        "long": 0, "short": 0}
