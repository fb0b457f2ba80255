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

# far below close()'s default timeout (5 s): close waits for no reply
QUICK = 1.0


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_asyncio_close_after_the_broker_stopped_is_quick(track: Tracker, kind: str) -> None:
    server = track.server(track.endpoint(kind))

    async def main() -> float:
        client = await aio.connect(server.endpoint, timeout=5.0, local_channel=False)
        await client.create_topic("t")
        await asyncio.to_thread(server.stop)
        started = time.monotonic()
        await client.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < QUICK


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_blocking_close_after_the_broker_stopped_is_quick(track: Tracker, kind: str) -> None:
    server = track.server(track.endpoint(kind))
    client = track.client(server.endpoint, local_channel=False)
    client.create_topic("t")
    server.stop()
    started = time.monotonic()
    client.close()
    assert time.monotonic() - started < QUICK
