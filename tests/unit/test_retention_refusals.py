"""A message due after its queue's retention is refused, not accepted and then dropped.

A queue drops a message ``retention`` seconds after it entered, visible or not: a delay
(the queue's or the message's) or a ``deliver_at`` at or past that would be accepted,
reported delivered, and then dropped unseen. Both are refused with ``InvalidArgument``
naming the two values; a publish is refused whole, like every other refusal (no copy to
any queue), when any target queue's retention is too short for any of its messages.
"""

from __future__ import annotations

from typing import Any

import pytest
from clocks import FakeClock

from fastfanout import Broker, InvalidArgument, PublishEntry
from fastfanout.model import ModelBroker


@pytest.fixture(params=["broker", "model"])
def any_broker(request: pytest.FixtureRequest, clock: FakeClock) -> Any:
    return Broker(clock=clock) if request.param == "broker" else ModelBroker(clock=clock)


@pytest.mark.parametrize("delay, retention", [(10.0, 10.0), (11.0, 10.0), (31_536_000, 1)])
def test_a_queue_delay_not_shorter_than_retention_is_refused(
        any_broker: Any, delay: float, retention: float) -> None:
    with pytest.raises(InvalidArgument, match=rf"delay={delay!r}.*retention={retention!r}"):
        any_broker.create_queue("q", delay=delay, retention=retention)
    assert any_broker.list_queues() == []
    any_broker.create_queue("q", delay=9.999, retention=10.0)
    assert any_broker.list_queues() == ["q"]


def counts(broker: Any) -> dict[str, tuple[int, int]]:
    return {name: (q.enqueued, q.messages) for name, q in broker.stats().queues.items()}


def test_a_send_due_after_retention_is_refused(any_broker: Any, clock: FakeClock) -> None:
    any_broker.create_queue("q", retention=60.0)
    for arguments in ({"delay": 60.0}, {"delay": 3600.0}, {"deliver_at": clock.now + 60.0}):
        with pytest.raises(InvalidArgument, match=r"due in 60 s|due in 3600 s"):
            any_broker.send("q", b"never seen", **arguments)
        with pytest.raises(InvalidArgument, match="retention=60"):
            any_broker.send_batch("q", [b"fine", PublishEntry(b"late", None, 60.0)])
    assert counts(any_broker) == {"q": (0, 0)}
    # just inside retention: accepted and delivered when due
    any_broker.send("q", b"in time", delay=59.0)
    clock.advance(59.0)
    assert [m.body for m in any_broker.receive("q")] == [b"in time"]


def test_a_publish_is_refused_whole_when_one_target_keeps_it_too_short(
        any_broker: Any, clock: FakeClock) -> None:
    any_broker.create_topic("t")
    any_broker.create_queue("long", retention=3600.0)
    any_broker.create_queue("short", retention=60.0)
    any_broker.subscribe("t", "long")
    any_broker.subscribe("t", "short")
    with pytest.raises(InvalidArgument, match=r"'short'.*retention=60"):
        any_broker.publish("t", b"m", delay=120.0)
    with pytest.raises(InvalidArgument, match=r"entry 1: .*'short'"):
        any_broker.publish_batch("t", [b"now", PublishEntry(b"later", None, None,
                                                            clock.now + 600.0)])
    assert counts(any_broker) == {"long": (0, 0), "short": (0, 0)}
    assert any_broker.stats().topics["t"].published == 0
    assert any_broker.publish("t", b"m", delay=30.0).deliveries == 2


def test_a_deliver_at_in_the_past_is_not_refused(any_broker: Any, clock: FakeClock) -> None:
    any_broker.create_queue("q", retention=1.0)
    any_broker.send("q", b"m", deliver_at=clock.now - 3600.0)
    assert [m.body for m in any_broker.receive("q")] == [b"m"]
