"""Per-subscription counters through a server: both clients and ``fastfanout stats``."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner

from fastfanout import PublishEntry, QueueFull, SubscriptionStats, aio
from fastfanout.cli import cli

Tracker = Any


def dropped(rejected: int = 0, oversized: int = 0, duplicates: int = 0) -> dict[str, int]:
    return {"rejected": rejected, "oversized": oversized, "duplicates": duplicates}


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_subscription_counters_on_both_clients_and_the_cli(track: Tracker,
                                                           transport: str) -> None:
    server = track.server(track.endpoint(transport))
    client = track.client(server.endpoint)
    client.create_topic("orders")
    client.create_queue("eu")
    client.create_queue("us", max_messages=1)
    eu = client.subscribe("orders", "eu", filter_policy={"region": ["eu"]})
    us = client.subscribe("orders", "us", filter_policy={"region": ["us"]})
    client.publish_batch("orders", [PublishEntry(b"1", attributes={"region": "eu"}),
                                    PublishEntry(b"2", attributes={"region": "us"}),
                                    PublishEntry(b"3", attributes={"region": "eu"})])
    with pytest.raises(QueueFull):   # us holds one already
        client.publish("orders", b"4", attributes={"region": "us"})
    expected = {
        eu: SubscriptionStats(topic="orders", queue="eu", delivered=2, filtered_out=1,
                              dropped=dropped()),
        us: SubscriptionStats(topic="orders", queue="us", delivered=1, filtered_out=2,
                              dropped=dropped(rejected=1)),
    }
    assert client.stats().subscriptions == expected

    async def from_asyncio() -> dict[int, SubscriptionStats]:
        async with aio.connect(server.endpoint, timeout=5.0) as async_client:
            return (await async_client.stats()).subscriptions

    assert asyncio.run(from_asyncio()) == expected

    runner = CliRunner()
    result = runner.invoke(cli, ["stats", "--json", "--endpoint", server.endpoint])
    assert result.exit_code == 0, result.output
    subscriptions = json.loads(result.output)["broker"]["subscriptions"]
    assert subscriptions[str(us)] == {"topic": "orders", "queue": "us", "delivered": 1,
                                      "filtered_out": 2, "dropped": dropped(rejected=1)}
    assert subscriptions[str(eu)]["delivered"] == 2
    result = runner.invoke(cli, ["stats", "--endpoint", server.endpoint],
                           env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("subscriptions")))
    header = lines[start + 1].split()
    assert header == ["subscription", "topic", "queue", "delivered", "filtered_out",
                      "rejected", "oversized", "duplicates"]
    rows = {line.split()[0]: line.split() for line in lines[start + 2:start + 4]}
    assert rows[str(eu)] == [str(eu), "orders", "eu", "2", "1", "0", "0", "0"]
    assert rows[str(us)] == [str(us), "orders", "us", "1", "2", "1", "0", "0"]
