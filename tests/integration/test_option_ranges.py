"""Count options past what the native layer holds: ``InvalidArgument``, nothing opened.

A batch limit or a high-water mark too large for its C integer raised ``OverflowError``
(after the connection was half opened, for ``connect``); each API now refuses it with
``InvalidArgument`` naming the option and its range.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from conftest import Tracker

from fastfanout import Broker, InvalidArgument, Server, aio, connect
from fastfanout.settings import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES, MAX_HIGH_WATER_MARK

HUGE = 2**70
PRODUCER_OPTIONS = [("batch_messages", MAX_BATCH_MESSAGES), ("batch_bytes", MAX_BATCH_BYTES)]


def refused(option: str, maximum: int) -> Any:
    return pytest.raises(InvalidArgument, match=rf"{option}=.* from 1 to {maximum}")


@pytest.mark.parametrize(("option", "maximum"), PRODUCER_OPTIONS)
def test_blocking_client_refuses_a_batch_limit_too_large(track: Tracker, option: str,
                                                         maximum: int) -> None:
    endpoint = track.server().endpoint
    client = track.client(endpoint)
    client.create_topic("t")
    threads = threading.active_count()
    with refused(option, maximum):
        connect(endpoint, **{option: HUGE})
    with refused(option, maximum):
        client.producer("t", **{option: HUGE})
    with refused("high_water_mark", MAX_HIGH_WATER_MARK):
        client.listen("t", high_water_mark=HUGE)
    assert threading.active_count() == threads   # no client half opened


@pytest.mark.parametrize(("option", "maximum"), PRODUCER_OPTIONS)
def test_asyncio_client_refuses_a_batch_limit_too_large(track: Tracker, option: str,
                                                        maximum: int) -> None:
    endpoint = track.server().endpoint

    async def main() -> None:
        with refused(option, maximum):
            await aio.connect(endpoint, **{option: HUGE})
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_topic("t")
            with refused(option, maximum):
                await client.producer("t", **{option: HUGE})
            with refused("high_water_mark", MAX_HIGH_WATER_MARK):
                await client.listen("t", high_water_mark=HUGE)

    asyncio.run(main())


@pytest.mark.parametrize("option", ["stream_high_water_mark", "max_queued_replies",
                                    "max_stream_subscriptions"])
def test_server_refuses_a_high_water_mark_too_large(track: Tracker, option: str) -> None:
    with refused(option, MAX_HIGH_WATER_MARK):
        Server(track.endpoint(), **{option: HUGE})


@pytest.mark.parametrize("option", ["capacity", "max_bytes"])
def test_embedded_producer_refuses_a_ring_too_large(option: str) -> None:
    with Broker() as broker:
        broker.create_topic("t")
        with pytest.raises(InvalidArgument, match=option):
            broker.producer("t", **{option: HUGE})
