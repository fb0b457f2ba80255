"""Closing a client whose broker has stopped (said GOODBYE) returns at once.

The asyncio client kept its socket after a stopping broker's GOODBYE, so ``close()``
sent BYE on it and waited its whole ``timeout`` (5 s) for a reply that never came.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import Tracker

from fastfanout import aio

LONG = 60.0
"""close()'s timeout here (the clients' too): what close waited for before the fix."""
QUICK = 10.0
"""Seconds: far below LONG (close waits for no reply), far above a loaded machine's
close."""


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_asyncio_close_after_the_broker_stopped_is_quick(track: Tracker, kind: str) -> None:
    server = track.server(track.endpoint(kind), heartbeat_interval=1.0,
                          heartbeat_timeout=LONG / 1.5)   # no silence rule helps

    async def main() -> float:
        client = await aio.connect(server.endpoint, timeout=LONG, local_channel=False)
        await client.create_topic("t")
        await asyncio.to_thread(server.stop)
        started = time.monotonic()
        await client.close(timeout=LONG)
        return time.monotonic() - started

    assert asyncio.run(main()) < QUICK


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_blocking_close_after_the_broker_stopped_is_quick(track: Tracker, kind: str) -> None:
    server = track.server(track.endpoint(kind), heartbeat_interval=1.0,
                          heartbeat_timeout=LONG / 1.5)   # no silence rule helps
    client = track.client(server.endpoint, local_channel=False, timeout=LONG)
    client.create_topic("t")
    server.stop()
    started = time.monotonic()
    client.close(timeout=LONG)
    assert time.monotonic() - started < QUICK
