"""Divergences the model-based state machine found, kept as plain regression tests."""

import pytest
from clocks import FakeClock

from fastfanout import Broker, Closed, InvalidArgument, StaleReceipt
from fastfanout.model import ModelBroker


@pytest.fixture
def fixed():
    broker = Broker(clock=lambda: 1000.0)
    yield broker
    if not broker.closed:
        assert broker.check()


def test_ack_batch_lists_each_stale_receipt_once(fixed):
    fixed.create_queue("q")
    fixed.send("q", b"x")
    (message,) = fixed.receive("q")
    fixed.ack(message.receipt)
    with pytest.raises(StaleReceipt) as caught:
        fixed.ack_batch([message.receipt, message.receipt])
    assert caught.value.receipts == [message.receipt]


def test_rejected_counts_only_refused_publishes_and_sends(fixed):
    fixed.create_queue("dlq", max_messages=1)
    fixed.create_queue("q", dead_letter_queue="dlq")
    fixed.send("dlq", b"occupant")
    fixed.send("q", b"x")
    fixed.term(fixed.receive("q")[0].receipt)
    stats = fixed.stats().queues
    assert stats["q"].dropped["dead_letter_full"] == 1
    assert stats["dlq"].rejected == 0
    fixed.create_queue("full", max_messages=1)
    fixed.send("full", b"occupant")
    fixed.purge("dlq")
    fixed.send("q", b"y")
    fixed.term(fixed.receive("q")[0].receipt)
    assert fixed.redrive("dlq", to="full") == 0  # no room: the redrive stops
    assert fixed.stats().queues["full"].rejected == 0


def test_a_publish_never_overfills_a_reject_queue(fixed):
    fixed.create_queue("dlq", max_messages=2)
    fixed.create_queue("src", max_messages=1, overflow="dead_letter", dead_letter_queue="dlq")
    fixed.create_topic("t")
    fixed.subscribe("t", "src")
    fixed.subscribe("t", "dlq")
    fixed.send("dlq", b"d0")
    fixed.send("src", b"s0")
    fixed.publish("t", b"new")
    stats = fixed.stats().queues
    assert stats["dlq"].messages == 2
    assert stats["src"].dropped["dead_letter_full"] == 1


def test_closed_comes_before_argument_checks(fixed):
    fixed.close()
    with pytest.raises(Closed):
        fixed.receive("q", max_messages=0)
    with pytest.raises(Closed):
        fixed.create_queue("q", visibility_timeout=-1)
    with pytest.raises(Closed):
        fixed.publish("no such topic", "not bytes")


def test_redrive_reaches_a_source_queue_created_again(fixed):
    fixed.create_queue("dlq")
    fixed.create_queue("q", dead_letter_queue="dlq")
    fixed.send("q", b"x")
    fixed.term(fixed.receive("q")[0].receipt)
    fixed.delete_queue("q")
    assert fixed.redrive("dlq") == 0  # no queue of that name: the message stays
    fixed.create_queue("q")
    assert fixed.redrive("dlq") == 1
    assert [m.body for m in fixed.receive("q")] == [b"x"]


def test_bad_arguments_still_raise_on_an_open_broker(fixed):
    with pytest.raises(InvalidArgument):
        fixed.receive("q", max_messages=0)


@pytest.mark.parametrize("make", [Broker, ModelBroker])
def test_a_dedup_id_and_a_body_are_different_keys(make):
    broker = make(clock=FakeClock())
    broker.create_queue("q", content_dedup=True)
    first = broker.send("q", b"x", dedup_id="k")
    second = broker.send("q", b"k")
    assert not second.duplicate and second.message_id == first.message_id + 1


@pytest.mark.parametrize("make", [Broker, ModelBroker])
def test_dedup_entries_counts_live_keys_only(make):
    clock = FakeClock()
    broker = make(clock=clock)
    broker.create_queue("q", dedup_window=1.0)
    broker.create_topic("t", dedup_window=1.0)
    broker.send("q", b"x", dedup_id="k")
    broker.publish("t", b"x", dedup_id="k")
    assert broker.stats().queues["q"].dedup_entries == 1
    clock.now += 2.0
    stats = broker.stats()
    assert stats.queues["q"].dedup_entries == 0 and stats.topics["t"].dedup_entries == 0


@pytest.mark.parametrize("make", [Broker, ModelBroker])
def test_extend_zero_returns_at_once_without_backoff(make):
    broker = make(clock=FakeClock())
    broker.create_queue("q", redelivery_backoff=(5.0,))
    broker.send("q", b"x")
    broker.extend(broker.receive("q")[0].receipt, 0)
    stats = broker.stats().queues["q"]
    assert stats.visible == 1 and stats.delayed == 0


@pytest.mark.parametrize("make", [Broker, ModelBroker])
def test_a_queue_fed_twice_by_one_topic_gets_one_copy(make):
    broker = make(clock=FakeClock())
    broker.create_topic("o.a")
    broker.create_queue("q", max_messages=1)
    broker.create_queue("f")
    broker.subscribe("o.a", "q")
    broker.subscribe("o.*", "q")
    broker.subscribe("o.a", "f", filter_policy={"k": ["x"]})
    broker.subscribe("o.*", "f", filter_policy={"k": ["y"]})
    result = broker.publish("o.a", b"1", attributes={"k": "y"})
    assert result.deliveries == 2
    stats = broker.stats().queues
    assert stats["q"].messages == 1 and stats["f"].messages == 1
    broker.purge("q")
    assert broker.publish("o.a", b"2", attributes={"k": "z"}).deliveries == 1  # only q


def test_a_refused_batch_counts_no_duplicate(fixed):
    # until 2026-12-05 the duplicates of a batch were counted when its copies were
    # checked: a batch refused by a later entry (or a later queue) counted them anyway,
    # once more at each retry (a client re-sending a malformed batch inflated them)
    from fastfanout import PublishEntry

    fixed.create_topic("t", fifo=True)
    fixed.create_queue("fq", fifo=True)
    subscription = fixed.subscribe("t", "fq")
    fixed.publish("t", b"first", group_id="g", dedup_id="a")
    fixed.send("fq", b"first", group_id="g", dedup_id="b")
    again = PublishEntry(b"again", group_id="g", dedup_id="a")
    for _ in range(3):
        with pytest.raises(InvalidArgument, match="dedup_id"):
            fixed.publish_batch("t", [PublishEntry(b"x", group_id="g", dedup_id="new"),
                                      PublishEntry(b"x", group_id="g")])
        with pytest.raises(InvalidArgument, match="dedup_id"):
            fixed.send_batch("fq", [PublishEntry(b"b", group_id="g", dedup_id="b"),
                                    PublishEntry(b"x", group_id="g")])
    stats = fixed.stats()
    assert stats.queues["fq"].duplicates == 0
    assert stats.subscriptions[subscription].dropped["duplicates"] == 0
    assert fixed.send_batch("fq", [PublishEntry(b"b", group_id="g", dedup_id="b")])[0].duplicate
    assert fixed.publish_batch("t", [again])[0].duplicate   # the topic's window says so
    assert fixed.stats().queues["fq"].duplicates == 1


COUNT_RANGE = "must be None or an int from 1 to 4,611,686,018,427,387,903"


@pytest.mark.parametrize("setting", ["max_messages", "max_bytes", "max_receive_count"])
@pytest.mark.parametrize("value", [0, 2**62, 2**63 - 1, 99999999999999999999])
def test_a_count_out_of_range_is_refused_with_its_whole_range(fixed, setting, value):
    # until 2026-12 a count of 2**62 or more was refused as "must be None or an int >= 1"
    fixed.create_queue("q")
    model = ModelBroker(clock=lambda: 1000.0)
    model.create_queue("q")
    expected = f"{setting}={value} {COUNT_RANGE}"
    for broker in (fixed, model):
        with pytest.raises(InvalidArgument) as refused:
            broker.create_queue("x", **{setting: value})
        assert str(refused.value) == expected
        with pytest.raises(InvalidArgument) as refused:
            broker.set_queue_settings("q", **{setting: value})
        assert str(refused.value) == expected
        assert broker.list_queues() == ["q"]
        assert getattr(broker.set_queue_settings("q"), setting) is None   # unchanged
    fixed.create_queue("x", **{setting: 2**62 - 1})   # the largest is taken
    assert getattr(fixed.queue_settings("x"), setting) == 2**62 - 1


@pytest.mark.parametrize("value", [0, 2**62, 99999999999999999999])
def test_a_redrive_count_out_of_range_is_refused_with_its_whole_range(fixed, value):
    fixed.create_queue("dlq")
    fixed.send("dlq", b"x")
    with pytest.raises(InvalidArgument) as refused:
        fixed.redrive("dlq", to="dlq2", max_messages=value)
    assert str(refused.value) == f"max_messages={value} {COUNT_RANGE}"
    assert fixed.stats().queues["dlq"].visible == 1
