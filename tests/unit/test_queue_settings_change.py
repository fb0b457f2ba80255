"""set_queue_settings on the embedded broker: each changeable setting takes effect from the
next operation that reads it, the others are refused, and a refusal changes nothing."""

from __future__ import annotations

import dataclasses

import pytest

from fastfanout import Broker
from fastfanout.errors import (
    AlreadyExists,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    QueueFull,
)
from fastfanout.records import ExponentialBackoff
from fastfanout.settings import CHANGEABLE_QUEUE_SETTINGS, QueueSettings


def test_the_returned_settings_are_what_queue_settings_says_after(broker: Broker) -> None:
    broker.create_queue("dlq")
    broker.create_queue("q", visibility_timeout=5)
    changed = broker.set_queue_settings(
        "q", visibility_timeout=60, max_receive_count=2, dead_letter_queue="dlq",
        delay=1.5, max_messages=10, max_bytes=1000, max_message_size=500, retention=3600,
        overflow="dead_letter", redelivery_backoff=[1, 2])
    assert changed == broker.queue_settings("q")
    assert changed == dataclasses.replace(
        QueueSettings(), visibility_timeout=60, max_receive_count=2, dead_letter_queue="dlq",
        delay=1.5, max_messages=10, max_bytes=1000, max_message_size=500, retention=3600,
        overflow="dead_letter", redelivery_backoff=(1, 2))
    # None removes a bound or the dead-letter queue
    removed = broker.set_queue_settings("q", max_receive_count=None, max_messages=None,
                                        overflow="reject", dead_letter_queue=None)
    assert (removed.max_receive_count, removed.max_messages, removed.dead_letter_queue) == (
        None, None, None)
    assert removed.visibility_timeout == 60   # what was not given stays


def test_a_new_lease_takes_the_new_visibility_timeout(broker: Broker, clock) -> None:
    broker.create_queue("q", visibility_timeout=10)
    broker.send_batch("q", [b"a", b"b"])
    first = broker.receive("q")
    broker.set_queue_settings("q", visibility_timeout=100)
    second = broker.receive("q")
    clock.advance(10)
    assert [m.id for m in broker.receive("q")] == [first[0].id]   # the old lease ended
    clock.advance(89.999)
    assert broker.receive("q") == []
    clock.advance(0.001)
    assert [m.id for m in broker.receive("q")] == [second[0].id]


def test_a_lowered_max_receive_count_dead_letters_at_the_next_delivery(
        broker: Broker, clock) -> None:
    broker.create_queue("dlq")
    broker.create_queue("q", visibility_timeout=1)
    broker.send("q", b"m")
    for _ in range(3):
        (message,) = broker.receive("q")
        broker.nack(message.receipt)
    broker.set_queue_settings("q", max_receive_count=2, dead_letter_queue="dlq")
    assert broker.receive("q") == []
    (dead,) = broker.receive("dlq")
    assert dead.body == b"m" and dead.dead_letter is not None
    assert dead.dead_letter.reason == "max_receives"
    assert broker.stats().queues["q"].dead_lettered == 1


def test_a_new_delay_applies_to_the_next_publish_only(broker: Broker, clock) -> None:
    broker.create_queue("q")
    broker.send("q", b"before")
    broker.set_queue_settings("q", delay=5)
    broker.send("q", b"after")
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"before"]
    clock.advance(5)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"after"]


def test_limits_lowered_keep_what_is_held_and_refuse_the_next(broker: Broker) -> None:
    broker.create_queue("q")
    broker.send_batch("q", [b"1", b"2", b"3"])
    broker.set_queue_settings("q", max_messages=2)
    with pytest.raises(QueueFull):
        broker.send("q", b"4")
    assert broker.stats().queues["q"].messages == 3
    broker.set_queue_settings("q", max_messages=None, max_message_size=2)
    broker.send("q", b"ok")
    with pytest.raises(MessageTooLarge):
        broker.send("q", b"too big")
    broker.set_queue_settings("q", overflow="drop_oldest", max_messages=3,
                              max_message_size=100)
    broker.send("q", b"5")
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"3", b"ok", b"5"]


def test_retention_lowered_drops_the_messages_already_too_old(broker: Broker, clock) -> None:
    broker.create_queue("q")
    broker.send("q", b"old")
    clock.advance(50)
    broker.send("q", b"new")
    broker.set_queue_settings("q", retention=30)
    clock.advance(0.001)
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"new"]
    assert broker.stats().queues["q"].dropped.get("retention", 0) == 1


def test_the_new_backoff_applies_to_the_next_failure(broker: Broker, clock) -> None:
    broker.create_queue("q", redelivery_backoff=[100])
    broker.send("q", b"m")
    broker.set_queue_settings("q", redelivery_backoff=ExponentialBackoff(2.0, 2.0, 60.0))
    (message,) = broker.receive("q")
    broker.nack(message.receipt)
    clock.advance(1.999)
    assert broker.receive("q") == []
    clock.advance(0.001)
    assert len(broker.receive("q")) == 1


def test_a_new_dead_letter_queue_takes_the_next_dead_letters_and_frees_the_old(
        broker: Broker) -> None:
    broker.create_queue("old-dlq")
    broker.create_queue("new-dlq")
    broker.create_queue("q", max_receive_count=1, dead_letter_queue="old-dlq")
    broker.send("q", b"m")
    broker.set_queue_settings("q", dead_letter_queue="new-dlq")
    (message,) = broker.receive("q")
    broker.term(message.receipt)
    assert broker.stats().queues["new-dlq"].messages == 1
    assert broker.stats().queues["old-dlq"].messages == 0
    broker.delete_queue("old-dlq")   # no longer anyone's dead-letter queue
    with pytest.raises(InvalidArgument, match="dead-letter queue of q"):
        broker.delete_queue("new-dlq")


@pytest.mark.parametrize("changes, words", [
    ({"fifo": True}, "fifo cannot change"),
    ({"max_priority": 3}, "max_priority cannot change"),
    ({"content_dedup": True}, "content_dedup cannot change"),
    ({"dedup_window": 10.0}, "dedup_window cannot change"),
    ({"durable": True}, "durable cannot change"),
    ({"colour": "red"}, "'colour' is not a queue setting"),
    ({"visibility_timeout": -1}, "visibility_timeout=-1"),
    ({"overflow": "spill"}, "overflow='spill'"),
    ({"delay": 10.0, "retention": 5.0}, "not shorter than retention"),
    ({"overflow": "dead_letter"}, "needs a dead_letter_queue"),
    ({"dead_letter_queue": "q"}, "its own dead-letter queue"),
    ({"max_messages": 0}, "max_messages"),
])
def test_a_refused_change_changes_nothing(broker: Broker, changes, words) -> None:
    broker.create_queue("q", visibility_timeout=7)
    before = broker.queue_settings("q")
    with pytest.raises(InvalidArgument, match=words):   # beside a good change, not taken
        broker.set_queue_settings("q", **{"visibility_timeout": 8, **changes})
    assert broker.queue_settings("q") == before


def test_a_fixed_setting_given_its_present_value_is_no_change(broker: Broker) -> None:
    broker.create_queue("q", fifo=True, content_dedup=True)
    changed = broker.set_queue_settings("q", fifo=True, content_dedup=True,
                                        visibility_timeout=3)
    assert changed.fifo and changed.visibility_timeout == 3


def test_a_dead_letter_cycle_is_refused(broker: Broker) -> None:
    broker.create_queue("c")
    broker.create_queue("b", dead_letter_queue="c")
    broker.create_queue("a", dead_letter_queue="b")
    with pytest.raises(InvalidArgument, match="leads back to 'c'"):
        broker.set_queue_settings("c", dead_letter_queue="a")
    assert broker.queue_settings("c").dead_letter_queue is None
    broker.set_queue_settings("a", dead_letter_queue="c")   # a chain, not a cycle


def test_missing_queues_are_not_found(broker: Broker) -> None:
    broker.create_queue("q")
    with pytest.raises(NotFound):
        broker.set_queue_settings("nope", delay=1.0)
    with pytest.raises(NotFound):
        broker.set_queue_settings("q", dead_letter_queue="nope")
    assert broker.queue_settings("q").dead_letter_queue is None


def test_every_changeable_setting_is_a_queue_setting() -> None:
    names = {field.name for field in dataclasses.fields(QueueSettings)}
    assert set(CHANGEABLE_QUEUE_SETTINGS) < names


def test_a_durable_broker_keeps_the_changed_settings_over_a_restart(tmp_path) -> None:
    with Broker(data_dir=tmp_path) as broker:
        broker.create_queue("dlq")
        broker.create_queue("q")
        broker.send("q", b"kept")
        broker.set_queue_settings("q", visibility_timeout=45, dead_letter_queue="dlq",
                                  max_receive_count=4, redelivery_backoff=[1, 3])
        expected = broker.queue_settings("q")
    with Broker(data_dir=tmp_path) as broker:
        assert broker.queue_settings("q") == expected
        assert [m.body for m in broker.receive("q")] == [b"kept"]
        with pytest.raises(InvalidArgument, match="dead-letter queue of q"):
            broker.delete_queue("dlq")


def test_create_queue_with_other_settings_names_them_and_the_way_to_change_them(
        broker: Broker) -> None:
    broker.create_queue("q", visibility_timeout=5, max_messages=3)
    with pytest.raises(AlreadyExists) as changeable:
        broker.create_queue("q", visibility_timeout=10, max_messages=3)
    assert "visibility_timeout=5 (asked 10)" in str(changeable.value)
    assert "max_messages" not in str(changeable.value)   # only what differs
    assert "set_queue_settings" in str(changeable.value)
    with pytest.raises(AlreadyExists) as fixed:
        broker.create_queue("q", visibility_timeout=5, max_messages=3, fifo=True)
    assert "fifo=False (asked True)" in str(fixed.value)
    assert "for life" in str(fixed.value)
    assert broker.queue_settings("q").visibility_timeout == 5
