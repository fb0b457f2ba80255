"""The reference model's restart: what a broker with a data directory keeps (semantics.md)."""

from __future__ import annotations

import pytest
from clocks import FakeClock

from fastfanout.errors import Closed, InvalidArgument, StaleReceipt
from fastfanout.model import ModelBroker
from fastfanout.records import PublishEntry


@pytest.fixture
def durable(clock: FakeClock) -> ModelBroker:
    model = ModelBroker(clock=clock, data_dir="unused")
    yield model
    if not model.closed:
        assert model.check()


def test_queues_are_durable_by_default_only_with_a_data_dir(clock: FakeClock,
                                                            durable: ModelBroker) -> None:
    memory = ModelBroker(clock=clock)
    with pytest.raises(InvalidArgument, match="data directory"):
        memory.create_queue("q", durable=True)
    memory.create_queue("q", durable=False)
    memory.create_queue("q")   # the same settings: durable=False is the default
    durable.create_queue("q")
    durable.create_queue("q", durable=True)
    with pytest.raises(Exception, match="other settings"):
        durable.create_queue("q", durable=False)
    with pytest.raises(InvalidArgument, match="True or False"):
        durable.create_queue("r", durable=1)  # type: ignore[arg-type]


def test_restart_keeps_topology_messages_and_receive_counts(durable: ModelBroker,
                                                            clock: FakeClock) -> None:
    durable.create_queue("dlq")
    durable.create_queue("q", max_receive_count=3, dead_letter_queue="dlq")
    durable.create_queue("mem", durable=False)
    durable.create_topic("t", content_dedup=True)
    durable.subscribe("t", "q")
    durable.subscribe("t", "mem")
    first, second, third = (durable.publish("t", body).message_id
                            for body in (b"one", b"two", b"three"))
    durable.send("q", b"later", delay=10.0)
    leased = durable.receive("q", max_messages=2)          # one, two leased
    durable.nack(leased[0].receipt)                          # one: to the tail, visible
    durable.restart()
    # every receipt is stale; the counters start afresh from what is held
    with pytest.raises(StaleReceipt):
        durable.ack(leased[1].receipt)
    stats = durable.stats()
    assert stats.queues["q"].messages == 4 and stats.queues["q"].enqueued == 4
    assert (stats.queues["q"].visible, stats.queues["q"].delayed) == (3, 1)
    assert stats.queues["q"].acked == stats.queues["q"].delivered == 0
    assert stats.queues["mem"].messages == stats.queues["mem"].enqueued == 0
    assert stats.topics["t"].published == 0 and stats.topics["t"].dedup_entries == 3
    assert durable.list_subscriptions() == {1: ("t", "q"), 2: ("t", "mem")}
    # arrival order, receive counts kept (the nack's move to the tail is not)
    again = durable.receive("q", max_messages=10)
    assert [(m.id, m.receive_count) for m in again] == [(first, 2), (second, 2), (third, 1)]
    # the topic's dedup window held: the same body is a duplicate
    assert durable.publish("t", b"two").duplicate
    assert durable.publish("t", b"four").message_id == third + 2   # ids keep increasing
    clock.advance(10.0)
    assert [m.body for m in durable.receive("q", max_messages=10)] == [b"four", b"later"]


def test_restart_of_a_fifo_queue_frees_its_groups(durable: ModelBroker) -> None:
    durable.create_queue("f", fifo=True, content_dedup=True)
    for n in range(3):
        durable.send("f", b"a%d" % n, group_id="a")
    durable.send("f", b"b0", group_id="b")
    assert [m.body for m in durable.receive("f", max_messages=10)] == [b"a0", b"b0"]
    durable.restart()
    received = durable.receive("f", max_messages=10)
    assert [(m.body, m.receive_count) for m in received] == [(b"a0", 2), (b"b0", 2)]


def test_restart_without_a_data_dir_is_a_new_broker() -> None:
    model = ModelBroker(clock=FakeClock())
    model.create_queue("q")
    model.send_batch("q", [b"x", PublishEntry(b"y")])
    model.restart()
    assert model.list_queues() == []
    model.create_queue("q")
    assert model.send("q", b"z").message_id == 1
    model.close()
    with pytest.raises(Closed):
        model.restart()
