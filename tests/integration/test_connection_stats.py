"""Per-connection counters of a server (SERVER_STATS' ``connection_stats``) and the CLI."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from click.testing import CliRunner

from fastfanout import aio
from fastfanout.cli import cli

Tracker = Any


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_each_connection_counts_its_publishes_deliveries_and_acks(track: Tracker,
                                                                 transport: str) -> None:
    server = track.server(track.endpoint(transport))
    publisher = track.client(server.endpoint)
    publisher.create_queue("q")
    publisher.create_topic("t")
    publisher.subscribe("t", "q")
    publisher.publish_batch("t", [b"1", b"2", b"3"])
    publisher.publish("t", b"4")
    publisher.send("q", b"5")   # 5 messages in 3 requests

    receiver = track.client(server.endpoint)
    taken = receiver.receive("q", max_messages=3)
    assert len(taken) == 3
    receiver.ack_batch([message.receipt for message in taken[:2]])
    receiver.ack(taken[2].receipt)

    async def consume_two() -> dict[str, Any]:
        async with aio.connect(server.endpoint, timeout=5.0) as consumer:
            seen = 0
            async for message in consumer.consume("q"):
                await message.ack()
                seen += 1
                if seen == 2:
                    break
            return await consumer.server_stats()

    from_asyncio = asyncio.run(consume_two())["connection_stats"]
    # The asyncio client's own connection is the one that pushed two and was asked.
    consumer_counts = [c for c in from_asyncio.values() if c["delivered"] == 2]
    assert len(consumer_counts) == 1
    assert consumer_counts[0]["consumers"] == 1

    def by_role() -> dict[str, dict[str, int]]:
        connections = publisher.server_stats()["connection_stats"]
        roles = {}
        for counters in connections.values():
            if counters["published"]:
                roles["publisher"] = counters
            elif counters["delivered"]:
                roles["receiver"] = counters
        return roles

    # The asyncio connection is gone once its client closed (its acks settled by then).
    track.wait_until(lambda: len(publisher.server_stats()["connection_stats"]) == 2,
                     what="the asyncio connection to end")
    roles = by_role()
    assert roles["publisher"]["published"] == 5
    assert roles["publisher"]["delivered"] == 0 and roles["publisher"]["acked"] == 0
    assert roles["publisher"]["consumers"] == 0
    assert roles["receiver"] == {**roles["receiver"], "published": 0, "delivered": 3,
                                 "acked": 3, "consumers": 0}
    for counters in roles.values():
        assert counters["bytes_in"] > 0 and counters["bytes_out"] > 0
        assert counters["requests"] > 0
    assert publisher.stats().queues["q"].acked == 5

    runner = CliRunner()
    result = runner.invoke(cli, ["stats", "--json", "--endpoint", server.endpoint])
    assert result.exit_code == 0, result.output
    connections = json.loads(result.output)["server"]["connection_stats"]
    assert sorted(c["published"] for c in connections.values()) == [0, 0, 5]
    result = runner.invoke(cli, ["stats", "--endpoint", server.endpoint],
                           env={"COLUMNS": "160"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = lines.index(next(line for line in lines if line.startswith("connections")))
    assert lines[start + 1].split() == ["connection", "consumers", "requests", "published",
                                        "delivered", "acked", "bytes_in", "bytes_out"]
    rows = [line.split() for line in lines[start + 2:start + 5]]
    assert sorted((row[3], row[4], row[5]) for row in rows) == [
        ("0", "0", "0"), ("0", "3", "3"), ("5", "0", "0")]
