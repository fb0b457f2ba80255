"""Topology limits through a server client: the refusal arrives as LimitExceeded."""

from __future__ import annotations

from typing import Any as Tracker

import pytest

from fastfanout import LimitExceeded


def test_topology_limits_refuse_a_client_at_one_over(track: Tracker, endpoint: str) -> None:
    track.server(endpoint, max_topics=1, max_queues=2, max_subscriptions_per_topic=1,
                 max_pattern_subscriptions=1)
    client = track.client(endpoint)
    client.create_topic("t")   # each exactly at its limit
    client.create_queue("a")
    client.create_queue("b")
    client.subscribe("t", "a")
    with pytest.raises(LimitExceeded, match="max_topics=1"):
        client.create_topic("u")
    with pytest.raises(LimitExceeded, match="max_queues=2"):
        client.create_queue("c")
    with pytest.raises(LimitExceeded, match="max_subscriptions_per_topic=1"):
        client.subscribe("t", "b")
    client.subscribe("none.*", "b")
    with pytest.raises(LimitExceeded, match="max_pattern_subscriptions=1"):
        client.subscribe("other.*", "b")
    topology = client.stats().topology
    assert (topology.topics_refused, topology.queues_refused,
            topology.subscriptions_refused, topology.pattern_subscriptions_refused) == (
                1, 1, 1, 1)
    assert (topology.topics, topology.queues, topology.subscriptions,
            topology.pattern_subscriptions) == (1, 2, 2, 1)
    assert client.publish("t", b"x").deliveries == 1


def test_stats_table_shows_the_topology_and_its_refusals(track: Tracker) -> None:
    from click.testing import CliRunner

    from fastfanout.cli import cli

    server = track.server(max_queues=1)
    client = track.client(server.endpoint)
    client.create_queue("a")
    with pytest.raises(LimitExceeded):
        client.create_queue("b")
    result = CliRunner().invoke(cli, ["stats", "--endpoint", server.endpoint],
                                env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split() == ["queues", "1", "1", "1"] for line in lines), result.output


def test_serve_refuses_a_limit_of_zero_in_one_line() -> None:
    from click.testing import CliRunner

    from fastfanout.cli import cli

    result = CliRunner().invoke(cli, ["serve", "--max-queues", "0"])
    assert result.exit_code == 2
    assert "--max-queues" in result.output and "Traceback" not in result.output
