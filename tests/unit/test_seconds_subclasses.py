"""Seconds given as a float or int subclass (``numpy.float64``, a user's): taken as the
plain number, on every path of the embedded broker that takes seconds; a bool never.

Until 2026-12 each was refused as "must be a number of seconds, got float64".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fastfanout import Broker, InvalidArgument, PublishEntry


class Seconds(float):
    """A user's float subclass."""


class WholeSeconds(int):
    """A user's int subclass."""


SUBCLASSES: list[Callable[[float], Any]] = [np.float64, Seconds,
                                            lambda value: WholeSeconds(round(value))]


@pytest.mark.parametrize("number", SUBCLASSES)
def test_every_call_taking_seconds_takes_a_float_or_int_subclass(broker: Broker, clock: Any,
                                                                 number: Any) -> None:
    broker.create_topic("t", dedup_window=number(60))
    broker.create_queue("q", visibility_timeout=number(5), delay=number(0),
                        retention=number(3600), dedup_window=number(60),
                        redelivery_backoff=[number(1), number(2)])
    settings = broker.queue_settings("q")
    for value, expected in ((settings.visibility_timeout, 5), (settings.delay, 0),
                            (settings.retention, 3600), (settings.dedup_window, 60)):
        assert type(value) in (float, int) and value == expected   # kept as plain numbers
    assert [type(step) in (float, int) for step in settings.redelivery_backoff] == [True] * 2
    assert type(broker.topic_settings("t").dedup_window) in (float, int)
    changed = broker.set_queue_settings("q", visibility_timeout=number(7))
    assert type(changed.visibility_timeout) in (float, int)
    assert changed.visibility_timeout == 7
    broker.subscribe("t", "q")
    broker.send("q", b"a", delay=number(0), ttl=number(60))
    broker.publish("t", b"b", delay=number(0))
    now = clock()
    broker.send("q", b"c", deliver_at=number(now))
    broker.publish_batch("t", [PublishEntry(b"d", delay=number(0), ttl=number(60)),
                               PublishEntry(b"e", deliver_at=number(now))])
    received = broker.receive("q", max_messages=10, wait=number(0),
                              visibility_timeout=number(5))
    assert sorted(message.body for message in received) == [b"a", b"b", b"c", b"d", b"e"]
    first, second, *rest = received
    first.extend(number(10))
    second.nack(delay=number(0))
    broker.extend_batch([message.receipt for message in rest[:1]], number(10))
    broker.nack_batch([message.receipt for message in rest[1:]], delay=number(0))
    assert broker.stats().queues["q"].visible == 3


@pytest.mark.parametrize("call", [
    lambda broker: broker.send("q", b"x", delay=True),
    lambda broker: broker.send("q", b"x", ttl=True),
    lambda broker: broker.receive("q", wait=True),
    lambda broker: broker.create_queue("v", visibility_timeout=True),
    lambda broker: broker.publish_batch("t", [PublishEntry(b"x", delay=True)]),
])
def test_a_bool_is_still_no_number_of_seconds(broker: Broker, call: Any) -> None:
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    with pytest.raises(InvalidArgument, match="must be a number of seconds, got bool"):
        call(broker)
    assert broker.list_queues() == ["q"] and broker.stats().queues["q"].visible == 0


def test_a_subclass_out_of_range_is_refused_as_its_plain_value(broker: Broker) -> None:
    broker.create_queue("q")
    with pytest.raises(InvalidArgument, match=r"delay=-1.0 must be finite"):
        broker.send("q", b"x", delay=np.float64(-1))
    with pytest.raises(InvalidArgument, match=r"visibility_timeout=nan must be finite"):
        broker.create_queue("v", visibility_timeout=np.float64("nan"))
    assert broker.list_queues() == ["q"] and broker.stats().queues["q"].visible == 0
