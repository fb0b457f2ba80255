"""A socket client's clean close sends nothing after its BYE.

The blocking client's ``close()`` waited for BYE's answer in its pump, which sent a
heartbeat when one was due (always, for a client idle a heartbeat interval or that made
no call): a request of a session the broker had just ended, counted in the server's
``ended_session_requests`` once per closed client.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import Tracker

from fastfanout import aio
from fastfanout.server.loop import Server

INTERVAL = 0.2
"""The broker's heartbeat interval here: a client idle that long owes a heartbeat."""


def settled(track: Tracker, server: Server) -> int:
    """The counter once the broker read what the closed client sent (round trips after)."""
    with track.client(server.endpoint, local_channel=False) as other:
        for _ in range(3):
            other.list_topics()
    return int(server.counters["ended_session_requests"])


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
@pytest.mark.parametrize("idle", [False, True])
def test_blocking_close_sends_nothing_after_bye(track: Tracker, kind: str,
                                                idle: bool) -> None:
    server = track.server(track.endpoint(kind), heartbeat_interval=INTERVAL)
    for _ in range(3):
        client = track.client(server.endpoint, local_channel=False)
        client.create_topic("t")
        if idle:
            time.sleep(INTERVAL * 1.5)   # a heartbeat falls due while nothing pumps
        client.close()
    assert settled(track, server) == 0


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_blocking_close_right_after_connect_sends_nothing_after_bye(
        track: Tracker, kind: str) -> None:
    server = track.server(track.endpoint(kind))
    for _ in range(3):
        track.client(server.endpoint, local_channel=False).close()
    assert settled(track, server) == 0


def test_local_channel_clients_send_nothing_that_overtakes_their_bye(track: Tracker) -> None:
    # A heartbeat was due at once after HELLO: it left on the socket while the local
    # channel was being attached, and could reach the broker after the BYE that a
    # short-lived client sent through the channel's ring.
    server = track.server(track.endpoint("ipc"))
    for _ in range(20):
        with track.client(server.endpoint, local_channel=True) as client:
            client.create_topic("t")
    assert settled(track, server) == 0


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_asyncio_close_sends_nothing_after_bye(track: Tracker, kind: str) -> None:
    server = track.server(track.endpoint(kind), heartbeat_interval=INTERVAL)

    async def main() -> None:
        for _ in range(3):
            client = await aio.connect(server.endpoint, local_channel=False)
            await client.create_topic("t")
            await asyncio.sleep(INTERVAL * 1.5)
            await client.close()

    asyncio.run(main())
    assert settled(track, server) == 0
