"""Per-connection limits of a broker server: consumers and waiting receives.

Every round of the server tries each push consumer and each receive waiting for
messages; until 2026-12-05 one client could open any number of either, and 20,000
waiting receives of one client made every other client's round trip ~100 times slower.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any as Tracker

import pytest

from fastfanout import InvalidArgument, LimitExceeded, aio
from fastfanout.server.loop import Server


async def _until_long_polls(observer: Tracker, count: int) -> None:
    deadline = time.monotonic() + 10.0
    while observer.server_stats()["long_polls"] < count:
        assert time.monotonic() < deadline, f"never {count} long polls"
        await asyncio.sleep(0.001)


def test_a_session_waits_at_most_max_long_polls_receives(track: Tracker, endpoint: str) -> None:
    track.server(endpoint, max_long_polls=2)
    observer = track.client(endpoint)
    observer.create_queue("q")

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            waiting = [asyncio.ensure_future(client.receive("q", wait=20.0))
                       for _ in range(2)]   # exactly at the limit
            await _until_long_polls(observer, 2)
            with pytest.raises(LimitExceeded, match="max_long_polls=2"):
                await client.receive("q", wait=20.0)   # one over
            assert await client.receive("q") == []     # no wait: not a long poll
            stats = observer.server_stats()
            assert (stats["long_polls_refused"], stats["long_polls"]) == (1, 2)
            assert observer.stats().queues["q"].leased == 0
            observer.send_batch("q", [b"a", b"b"])
            bodies = sorted(m.body for got in await asyncio.gather(*waiting) for m in got)
            assert bodies == [b"a", b"b"]
            # answered ones count no more: the session may wait again
            again = asyncio.ensure_future(client.receive("q", wait=20.0))
            await _until_long_polls(observer, 1)
            observer.send("q", b"c")
            assert [m.body for m in await again] == [b"c"]

    asyncio.run(main())
    assert observer.server_stats()["long_polls_refused"] == 1


def test_a_session_opens_at_most_max_consumers(track: Tracker, endpoint: str) -> None:
    track.server(endpoint, max_consumers=2)
    client = track.client(endpoint)
    client.create_queue("q")
    consumers = [client.consume("q", prefetch=1) for _ in range(2)]   # exactly at it
    with pytest.raises(LimitExceeded, match="max_consumers=2"):
        client.consume("q")   # one over
    stats = client.server_stats()
    assert (stats["consumers_refused"], stats["consumers"]) == (1, 2)
    consumers[0].cancel()
    replacement = client.consume("q", prefetch=1)   # cancelled ones count no more
    assert client.server_stats()["consumers"] == 2
    replacement.cancel()
    consumers[1].cancel()


@pytest.mark.parametrize("option", ["max_consumers", "max_long_polls"])
@pytest.mark.parametrize("bad", [0, -1, 1.5, float("nan"), True, "1", None, 2**31])
def test_server_refuses_a_bad_session_limit(track: Tracker, option: str, bad: object) -> None:
    with pytest.raises(InvalidArgument, match=option):
        Server(track.endpoint(), **{option: bad})
