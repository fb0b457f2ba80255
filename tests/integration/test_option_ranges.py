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
from click.testing import CliRunner
from conftest import Tracker

from fastfanout import Broker, InvalidArgument, Server, aio, connect
from fastfanout.cli import cli
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


@pytest.mark.parametrize("option", ["local_channels", "deliver_by_reference"])
@pytest.mark.parametrize("value", ["false", 0, None])
def test_server_refuses_a_flag_that_is_not_a_bool(track: Tracker, option: str,
                                                 value: object) -> None:
    # until 2026-12-07 its truth value was taken: "false" turned the setting on
    with pytest.raises(InvalidArgument, match=f"{option} must be True or False"):
        Server(track.endpoint(), **{option: value})


@pytest.mark.parametrize("option", ["capacity", "max_bytes"])
def test_embedded_producer_refuses_a_ring_too_large(option: str) -> None:
    with Broker() as broker:
        broker.create_topic("t")
        with pytest.raises(InvalidArgument, match=option):
            broker.producer("t", **{option: HUGE})


COUNT_RANGE = "must be None or an int from 1 to 4,611,686,018,427,387,903"
QUEUE_COUNTS = ["max_messages", "max_bytes", "max_receive_count"]
PAST_THE_RANGE = [2**62, 2**63 - 1, 99999999999999999999]   # the last one past 64 bits


def test_clients_refuse_a_queue_count_in_the_embedded_brokers_words(track: Tracker) -> None:
    # until 2026-12 a count from 2**62 said "must be None or an int >= 1" and one past 64
    # bits "is outside the 64-bit integer range": neither named the real range
    endpoint = track.server().endpoint
    client = track.client(endpoint)
    client.create_queue("q")
    calls: list[tuple[str, Any]] = []
    for setting in QUEUE_COUNTS:
        for value in PAST_THE_RANGE:
            expected = f"{setting}={value} {COUNT_RANGE}"
            calls += [(expected, lambda c, s=setting, v=value: c.create_queue("x", **{s: v})),
                      (expected, lambda c, s=setting, v=value: c.set_queue_settings(
                          "q", **{s: v}))]
    for value in PAST_THE_RANGE:
        calls.append((f"max_messages={value} {COUNT_RANGE}",
                      lambda c, v=value: c.redrive("q", max_messages=v)))
    with Broker() as broker:
        broker.create_queue("q")
        for expected, call in calls:
            for face in (broker, client):
                with pytest.raises(InvalidArgument) as refused:
                    call(face)
                assert str(refused.value) == expected
        assert client.list_queues() == ["q"] == broker.list_queues()

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as aclient:
            for expected, call in calls:
                with pytest.raises(InvalidArgument) as refused:
                    await call(aclient)
                assert str(refused.value) == expected

    asyncio.run(main())


def test_cli_refuses_a_queue_count_with_its_whole_range(track: Tracker) -> None:
    endpoint = track.server().endpoint
    track.client(endpoint).create_queue("q")
    runner = CliRunner()
    for option in ("--max-receive-count", "--max-messages", "--max-bytes"):
        for value in ("9223372036854775807", "99999999999999999999"):
            setting = option[2:].replace("-", "_")
            for command in (["create-queue", "q"], ["set-queue-settings", "q"]):
                result = runner.invoke(cli, [*command, option, value, "-e", endpoint])
                assert result.exit_code == 1, result.output
                assert result.output == (f"error [invalid_argument]: {setting}={value} "
                                         f"{COUNT_RANGE}\n"), result.output
