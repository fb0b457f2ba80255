"""Topology limits through a server client: the refusal arrives as LimitExceeded."""

from __future__ import annotations

from typing import Any as Tracker

import pytest

from fastfanout import LimitExceeded


def test_topology_limits_refuse_a_client_at_one_over(track: Tracker, endpoint: str) -> None:
    track.server(endpoint, max_topics=1, max_queues=2, max_subscriptions_per_topic=1)
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
    topology = client.stats().topology
    assert (topology.topics_refused, topology.queues_refused,
            topology.subscriptions_refused) == (1, 1, 1)
    assert (topology.topics, topology.queues, topology.subscriptions) == (1, 2, 1)
    assert client.publish("t", b"x").deliveries == 1
