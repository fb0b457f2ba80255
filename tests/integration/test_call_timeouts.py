"""Timeouts of the blocking client's waits outside consume/receive: futures, close, listeners.

A timeout that is not seconds (NaN, a str) is refused with ``InvalidArgument`` before
anything waits or changes (it was a ``ValueError``/``TypeError`` from deep inside the
wait, or a listener that never returned); ``inf`` waits without a limit, as None does
(``close(inf)`` was an ``OverflowError`` from ``Thread.join``).
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from fastfanout import aio
from fastfanout.errors import InvalidArgument

BAD = [math.nan, "1", b"1", [1.0], True]


def _client(track: Any) -> Any:
    endpoint = track.endpoint()
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_queue("q")
    client.create_topic("t")
    client.subscribe("t", "q")
    return client


@pytest.mark.parametrize("timeout", BAD, ids=repr)
def test_future_waits_refuse_a_bad_timeout(track: Any, timeout: object) -> None:
    client = _client(track)
    future = client.publish_nowait("t", b"one")
    batch = client.publish_batch_nowait("t", [b"two", b"three"])
    for wait in (future.result, future.exception, batch.result, batch.exception):
        with pytest.raises(InvalidArgument, match="timeout"):
            wait(timeout)
    # nothing was broken: both still complete, on the same connection
    assert future.result().message_id > 0
    assert len(batch.result()) == 2
    assert client.stats().queues["q"].visible == 3


def test_future_waits_take_inf_as_no_limit(track: Any) -> None:
    client = _client(track)
    assert client.publish_nowait("t", b"one").result(math.inf).message_id > 0
    assert client.publish_batch_nowait("t", [b"two"]).exception(math.inf) is None


@pytest.mark.parametrize("timeout", BAD, ids=repr)
def test_close_refuses_a_bad_timeout_and_stays_open(track: Any, timeout: object) -> None:
    client = _client(track)
    with pytest.raises(InvalidArgument, match="timeout"):
        client.close(timeout)
    assert not client.closed
    assert client.publish("t", b"still open").message_id > 0


@pytest.mark.parametrize("timeout", [math.inf, None, 0, -1.0])
def test_close_takes_inf_none_and_no_wait(track: Any, timeout: float | None) -> None:
    client = _client(track)
    client.publish_nowait("t", b"flushed by close")
    client.close(timeout)
    assert client.closed


@pytest.mark.parametrize("timeout", BAD, ids=repr)
def test_listener_recv_batch_refuses_a_bad_timeout(track: Any, timeout: object) -> None:
    client = _client(track)
    with client.listen("t") as listener:
        with pytest.raises(InvalidArgument, match="timeout"):
            listener.recv_batch(timeout)   # type: ignore[arg-type]
        client.publish("t", b"after")
        batch = listener.recv_batch(10.0)
        assert batch is not None and [m.body for m in batch] == [b"after"]


def test_async_listener_recv_batch_refuses_a_bad_timeout(track: Any) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_topic("t")
            listener = client.listen("t")
            try:
                with pytest.raises(InvalidArgument, match="timeout"):
                    await listener.recv_batch(math.nan)
            finally:
                listener.close()

    asyncio.run(main())
