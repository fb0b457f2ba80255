"""A filter policy given as a map with a set, a tuple or a date: refused in every face.

Until 2026-12-07 the clients sent it (msgpack makes a set or tuple an array and a date
text) and the broker subscribed, where the embedded broker refused it as not JSON.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any
from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout import aio

POLICIES: list[dict[str, Any]] = [
    {"kind": {"new", "old"}},
    {"kind": ("new", "old")},
    {"day": [datetime.date(2020, 1, 1)]},
]


def _setup(broker: Any) -> int:
    broker.create_topic("t")
    broker.create_queue("q")
    broker.create_queue("r")
    return int(broker.subscribe("t", "r", filter_policy={"kind": ["new"]}))


def _refusals(broker: Any, subscription: int) -> list[str]:
    found = []
    for policy in POLICIES:
        with pytest.raises(fastfanout.InvalidFilterPolicy) as raised:
            broker.subscribe("t", "q", filter_policy=policy)
        found.append(str(raised.value))
        with pytest.raises(fastfanout.InvalidFilterPolicy) as raised:
            broker.set_filter_policy(subscription, policy)
        found.append(str(raised.value))
    return found


def test_a_policy_that_is_not_json_is_refused_by_clients_as_by_the_broker(
        track: Tracker) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    with fastfanout.Broker() as broker:
        embedded = _refusals(broker, _setup(broker))
    assert "set" in embedded[0] and "('new', 'old')" in embedded[2]
    assert "date" in embedded[4]
    client = track.client(endpoint)
    subscription = _setup(client)
    assert _refusals(client, subscription) == embedded
    # nothing changed: q has no subscription, r keeps its policy
    assert client.list_subscriptions() == {subscription: ("t", "r")}
    assert client.subscription(subscription).filter_policy == '{"kind": ["new"]}'

    async def main() -> list[str]:
        async with aio.connect(endpoint, timeout=5.0) as client:
            found = []
            for policy in POLICIES:
                with pytest.raises(fastfanout.InvalidFilterPolicy) as raised:
                    await client.subscribe("t", "q", filter_policy=policy)
                found.append(str(raised.value))
                with pytest.raises(fastfanout.InvalidFilterPolicy) as raised:
                    await client.set_filter_policy(subscription, policy)
                found.append(str(raised.value))
            return found

    assert asyncio.run(main()) == embedded
