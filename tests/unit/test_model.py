"""The reference model, rule by rule of docs/semantics.md."""

from __future__ import annotations

import math

import msgspec
import pytest
from clocks import FakeClock as Clock
from hypothesis import given, settings
from hypothesis import strategies as st

from fastfanout.errors import (
    AlreadyExists,
    Closed,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    QueueFull,
    StaleReceipt,
)
from fastfanout.model import ModelBroker, ModelMessage, attributes_size
from fastfanout.records import DeadLetterInfo, PublishEntry, PublishResult
from fastfanout.stats import DROP_REASONS


@pytest.fixture
def model(clock: Clock) -> ModelBroker:
    broker = ModelBroker(clock=clock)
    yield broker
    if not broker.closed:
        assert broker.check()
        assert_nothing_lost(broker)


def assert_nothing_lost(broker: ModelBroker) -> None:
    for name, queue in broker.stats().queues.items():
        assert queue.messages == queue.visible + queue.leased + queue.delayed, name
        assert queue.enqueued == (queue.messages + queue.acked + queue.purged
                                  + queue.dead_lettered + queue.redriven
                                  + sum(queue.dropped.values())), name


def bodies(messages: list[ModelMessage]) -> list[bytes]:
    return [message.body for message in messages]


def queue_stats(model: ModelBroker, name: str):
    return model.stats().queues[name]


# -- time, names, ids, bodies, attributes -----------------------------------------------


def test_times_are_whole_microseconds(model, clock):
    clock.now = 1_000_000.0000004  # rounds down to ...000 us
    model.create_queue("q")
    model.send("q", b"x")
    [message] = model.receive("q")
    assert message.timestamp == 1_000_000.0
    clock.now = 1_000_000.0000006
    model.send("q", b"y")
    [message] = model.receive("q")
    assert message.timestamp == 1_000_000.000001


def test_a_clock_that_returns_garbage_is_refused():
    with pytest.raises(InvalidArgument):
        ModelBroker(clock=lambda: math.nan).list_queues()
    with pytest.raises(InvalidArgument):
        ModelBroker(clock=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["", "a b", "x" * 257, "é", None, 3, "q/1"])
def test_bad_names_are_invalid(model, name):
    with pytest.raises(InvalidArgument):
        model.create_queue(name)
    with pytest.raises(InvalidArgument):
        model.create_topic(name)
    with pytest.raises(InvalidArgument):
        model.send(name, b"x")
    assert model.list_queues() == [] and model.list_topics() == []


def test_names_allow_the_documented_characters_and_listings_are_sorted(model):
    for name in ["z", "A.b:c-d_e", "0" * 256]:
        model.create_queue(name)
        model.create_topic(name)
    assert model.list_queues() == sorted(["z", "A.b:c-d_e", "0" * 256])
    assert model.list_topics() == model.list_queues()


def test_unknown_names_are_not_found(model):
    for call in (lambda: model.send("nope", b"x"), lambda: model.publish("nope", b"x"),
                 lambda: model.receive("nope"), lambda: model.delete_queue("nope"),
                 lambda: model.delete_topic("nope"), lambda: model.purge("nope"),
                 lambda: model.redrive("nope"), lambda: model.unsubscribe(1)):
        with pytest.raises(NotFound):
            call()


def test_ids_increase_from_one_and_copies_share_them(model):
    model.create_topic("t")
    for name in ("q1", "q2"):
        model.create_queue(name)
        model.subscribe("t", name)
    assert model.publish("t", b"a") == PublishResult(1, 2)
    assert model.send("q1", b"b") == PublishResult(2, 1)
    assert model.publish_batch("t", [b"c", b"d"]) == [PublishResult(3, 2), PublishResult(4, 2)]
    assert [m.id for m in model.receive("q1", max_messages=10)] == [1, 2, 3, 4]
    assert [m.id for m in model.receive("q2", max_messages=10)] == [1, 3, 4]


def test_a_failed_publish_uses_no_id(model):
    model.create_queue("q", max_messages=1)
    model.send("q", b"a")
    with pytest.raises(QueueFull):
        model.send("q", b"b")
    with pytest.raises(InvalidArgument):
        model.send("q", "text")  # type: ignore[arg-type]
    model.purge("q")
    assert model.send("q", b"c").message_id == 2


def test_bodies_are_bytes_like_and_copied(model):
    model.create_queue("q")
    buffer = bytearray(b"abc")
    model.send("q", buffer)
    model.send("q", memoryview(b"xyz")[1:])
    buffer[0] = ord("Z")
    assert bodies(model.receive("q", max_messages=2)) == [b"abc", b"yz"]
    for bad in ("text", 12, None, [1]):
        with pytest.raises(InvalidArgument):
            model.send("q", bad)  # type: ignore[arg-type]


def test_attributes_are_returned_as_published(model):
    model.create_queue("q")
    attributes = {"s": "x", "n": 3, "f": 1.5, "b": b"\x00", "l": ["a", "b"]}
    model.send("q", b"", attributes=attributes)
    model.send("q", b"", attributes=None)
    first, second = model.receive("q", max_messages=2)
    assert first.attributes == attributes and second.attributes == {}


@pytest.mark.parametrize("attributes", [
    {"flag": True},
    {"": "x"},
    {"x" * 257: "x"},
    {1: "x"},
    {"l": ["a", 1]},
    {"d": {"nested": 1}},
    {"big": 2**70},
    {"n": math.nan},
    {"n": math.inf},
    {f"k{i}": i for i in range(11)},
    ["not", "a", "dict"],
])
def test_bad_attributes_are_invalid(model, attributes):
    model.create_queue("q")
    with pytest.raises(InvalidArgument):
        model.send("q", b"x", attributes=attributes)
    assert queue_stats(model, "q").enqueued == 0


def test_message_size_counts_encoded_attributes(model):
    attributes = {"k": "v"}
    encoded = len(msgspec.msgpack.encode(attributes))
    assert attributes_size(attributes) == encoded and attributes_size({}) == 0
    model.create_queue("q", max_message_size=10 + encoded)
    model.send("q", b"x" * 10, attributes=attributes)
    with pytest.raises(MessageTooLarge):
        model.send("q", b"x" * 11, attributes=attributes)
    assert queue_stats(model, "q").bytes == 10 + encoded


def test_a_publish_checks_size_against_every_target_first(model):
    model.create_topic("t")
    model.create_queue("big")
    model.create_queue("small", max_message_size=4)
    model.subscribe("t", "big")
    model.subscribe("t", "small")
    with pytest.raises(MessageTooLarge):
        model.publish("t", b"12345")
    with pytest.raises(MessageTooLarge):
        model.publish_batch("t", [b"1", b"12345"])
    assert queue_stats(model, "big").enqueued == 0
    assert model.stats().topics["t"].published == 0


# -- topics and subscriptions -----------------------------------------------------------


def test_subscriptions(model):
    model.create_topic("t")
    model.create_topic("t")  # no-op
    model.create_queue("q")
    assert model.subscribe("t", "q") == 1
    assert model.subscribe("t", "q") == 1
    model.create_topic("u")
    assert model.subscribe("u", "q") == 2
    assert model.stats().topics["t"].subscriptions == 1
    model.unsubscribe(1)
    with pytest.raises(NotFound):
        model.unsubscribe(1)
    with pytest.raises(InvalidArgument):
        model.unsubscribe("1")  # type: ignore[arg-type]
    assert model.subscribe("t", "q") == 3


def test_a_topic_without_subscriptions_counts_unrouted(model):
    model.create_topic("t")
    assert model.publish("t", b"x") == PublishResult(1, 0)
    assert model.stats().topics["t"].published == 1
    assert model.stats().topics["t"].unrouted == 1


def test_delete_topic_removes_its_subscriptions_not_its_copies(model):
    model.create_topic("t")
    model.create_queue("q")
    sid = model.subscribe("t", "q")
    model.publish("t", b"x")
    model.delete_topic("t")
    with pytest.raises(NotFound):
        model.unsubscribe(sid)
    assert bodies(model.receive("q")) == [b"x"]
    assert "t" not in model.stats().topics


def test_copies_go_out_in_subscription_order(model):
    model.create_topic("t")
    model.create_queue("dlq")
    for name in ("q2", "q1"):
        model.create_queue(name, max_messages=1, overflow="dead_letter", dead_letter_queue="dlq")
        model.subscribe("t", name)
    model.send("q1", b"old")
    model.send("q2", b"old")
    assert model.publish("t", b"new") == PublishResult(3, 2)
    assert [m.dead_letter.source_queue for m in model.receive("dlq", max_messages=10)] == [
        "q2", "q1"]
    assert model.stats().topics["t"].deliveries == 2


# -- queues -----------------------------------------------------------------------------


def test_create_queue_is_idempotent_only_with_equal_settings(model):
    model.create_queue("q", visibility_timeout=5)
    model.create_queue("q", visibility_timeout=5.0)
    with pytest.raises(AlreadyExists):
        model.create_queue("q")


@pytest.mark.parametrize("settings", [
    {"visibility_timeout": -1}, {"visibility_timeout": 43_201}, {"visibility_timeout": math.nan},
    {"delay": 31_536_001}, {"delay": math.inf}, {"retention": 0.5}, {"retention": 31_536_001},
    {"retention": 0.9999996}, {"visibility_timeout": 43_200.0000004},
    {"max_receive_count": 0}, {"max_messages": 0}, {"max_bytes": -1}, {"max_messages": 1.0},
    {"max_message_size": 0}, {"max_message_size": 256 * 1024 * 1024 + 1},
    {"overflow": "drop"}, {"overflow": "dead_letter"}, {"dead_letter_queue": "q"},
    {"visibility_timeout": "5"}, {"delay": True},
])
def test_bad_queue_settings_are_invalid(model, settings):
    with pytest.raises(InvalidArgument):
        model.create_queue("q", **settings)
    assert model.list_queues() == []


def test_the_dead_letter_queue_must_exist_and_stay(model, clock):
    with pytest.raises(NotFound):
        model.create_queue("q", dead_letter_queue="dlq")
    model.create_queue("dlq")
    model.create_queue("q", dead_letter_queue="dlq")
    with pytest.raises(InvalidArgument):
        model.delete_queue("dlq")
    model.delete_queue("q")
    model.delete_queue("dlq")


def test_delete_queue_drops_messages_subscriptions_and_receipts(model):
    model.create_topic("t")
    model.create_queue("q")
    model.subscribe("t", "q")
    model.publish("t", b"x")
    [message] = model.receive("q")
    model.delete_queue("q")
    with pytest.raises(StaleReceipt):
        model.ack(message.receipt)
    assert model.publish("t", b"y").deliveries == 0
    model.create_queue("q")
    assert model.receive("q") == []


# -- states, delays and visible order ---------------------------------------------------


def test_queue_delay_and_per_message_delay(model, clock):
    model.create_queue("q", delay=1.0)
    model.send("q", b"queue-delay")
    model.send("q", b"no-delay", delay=0)
    model.send("q", b"own-delay", delay=0.5)
    stats = queue_stats(model, "q")
    assert (stats.visible, stats.delayed) == (1, 2)
    assert bodies(model.receive("q", max_messages=10)) == [b"no-delay"]
    clock.advance(0.5)
    assert bodies(model.receive("q", max_messages=10)) == [b"own-delay"]
    clock.advance(0.499999)
    assert model.receive("q") == []
    clock.advance(0.000001)
    assert bodies(model.receive("q")) == [b"queue-delay"]


def test_deliver_at(model, clock):
    model.create_queue("q", delay=10)
    model.send("q", b"past", deliver_at=clock.now - 5)
    model.send("q", b"future", deliver_at=clock.now + 2)
    assert bodies(model.receive("q", max_messages=10)) == [b"past"]
    clock.advance(2)
    assert bodies(model.receive("q", max_messages=10)) == [b"future"]
    with pytest.raises(InvalidArgument):
        model.send("q", b"both", delay=1, deliver_at=clock.now + 1)
    with pytest.raises(InvalidArgument):
        model.send("q", b"far", deliver_at=clock.now + 31_536_001)


@pytest.mark.parametrize("delay", [-0.001, math.nan, math.inf, 31_536_001, "1"])
def test_bad_message_delays_are_invalid(model, delay):
    model.create_queue("q")
    with pytest.raises(InvalidArgument):
        model.send("q", b"x", delay=delay)
    with pytest.raises(InvalidArgument):
        model.send_batch("q", [b"ok", PublishEntry(b"x", delay=delay)])
    assert queue_stats(model, "q").enqueued == 0


def test_visible_messages_come_out_fifo_and_return_to_the_tail(model, clock):
    model.create_queue("q", visibility_timeout=10)
    model.send_batch("q", [b"a", b"b", b"c"])
    first = model.receive("q")[0]
    model.nack(first.receipt)
    assert bodies(model.receive("q", max_messages=10)) == [b"b", b"c", b"a"]


def test_timers_fire_in_due_then_arming_order(model, clock):
    model.create_queue("q", visibility_timeout=5)
    model.send("q", b"delayed", delay=5)  # armed first, due at +5
    model.send_batch("q", [b"x", b"y"])
    x, _ = model.receive("q", max_messages=2)  # leases due at +5, armed after
    model.extend(x.receipt, 5)  # re-armed last
    clock.advance(5)
    assert bodies(model.receive("q", max_messages=10)) == [b"delayed", b"y", b"x"]


def test_retention_removes_leased_messages(model, clock):
    model.create_queue("q", retention=2, visibility_timeout=1)
    model.send("q", b"x")
    [message] = model.receive("q")
    clock.advance(2)
    assert model.receive("q") == []
    with pytest.raises(StaleReceipt):
        model.ack(message.receipt)
    stats = queue_stats(model, "q")
    assert stats.dropped["retention"] == 1 and stats.messages == 0


# -- receive, receipts, settle ----------------------------------------------------------


def test_receive_arguments(model):
    model.create_queue("q")
    for kwargs in ({"max_messages": 0}, {"max_messages": 10_001}, {"max_messages": 1.0},
                   {"wait": -1}, {"wait": 20.5}, {"visibility_timeout": 43_201},
                   {"visibility_timeout": -1}):
        with pytest.raises(InvalidArgument):
            model.receive("q", **kwargs)
    assert model.receive("q", max_messages=10_000, wait=20) == []


def test_leases_expire_and_count_redeliveries(model, clock):
    model.create_queue("q", visibility_timeout=30)
    model.send("q", b"x")
    [first] = model.receive("q", visibility_timeout=1)
    assert first.receive_count == 1 and first.queue == "q" and first.dead_letter is None
    assert model.receive("q") == []
    clock.advance(1)
    [second] = model.receive("q")
    assert second.receive_count == 2 and second.receipt != first.receipt
    with pytest.raises(StaleReceipt):
        model.ack(first.receipt)
    model.ack(second.receipt)
    stats = queue_stats(model, "q")
    assert (stats.delivered, stats.redelivered, stats.acked) == (2, 1, 1)


@pytest.mark.parametrize("end", ["ack", "nack", "term", "extend0", "purge", "delete"])
def test_receipts_go_stale(model, end):
    model.create_queue("q")
    model.send("q", b"x")
    [message] = model.receive("q")
    {"ack": lambda: model.ack(message.receipt),
     "nack": lambda: model.nack(message.receipt),
     "term": lambda: model.term(message.receipt),
     "extend0": lambda: model.extend(message.receipt, 0),
     "purge": lambda: model.purge("q"),
     "delete": lambda: model.delete_queue("q")}[end]()
    before = model.stats()
    for settle in (model.ack, model.nack, model.term, lambda r: model.extend(r, 5)):
        with pytest.raises(StaleReceipt) as caught:
            settle(message.receipt)
        assert caught.value.receipts == [message.receipt]
    assert model.stats() == before


@pytest.mark.parametrize("receipt", [-1, 2**64, "1", 1.0, None, True])
def test_malformed_receipts_are_invalid(model, receipt):
    with pytest.raises(InvalidArgument):
        model.ack(receipt)
    with pytest.raises(InvalidArgument):
        model.ack_batch([receipt])


def test_a_receipt_never_issued_is_stale(model):
    with pytest.raises(StaleReceipt):
        model.ack(2**64 - 1)


def test_ack_batch_is_atomic_and_acks_repeats_once(model):
    model.create_queue("q")
    model.send_batch("q", [b"a", b"b", b"c"])
    a, b, c = model.receive("q", max_messages=3)
    model.ack(c.receipt)
    with pytest.raises(StaleReceipt) as caught:
        model.ack_batch([a.receipt, c.receipt, b.receipt, c.receipt])
    assert caught.value.receipts == [c.receipt]
    assert queue_stats(model, "q").leased == 2
    model.ack_batch([a.receipt, b.receipt, a.receipt])
    assert queue_stats(model, "q").acked == 3
    model.ack_batch([])


def test_nack_with_delay(model, clock):
    model.create_queue("q")
    model.send("q", b"x")
    [message] = model.receive("q")
    model.nack(message.receipt, delay=2)
    assert queue_stats(model, "q").delayed == 1
    clock.advance(1.999999)
    assert model.receive("q") == []
    clock.advance(0.000001)
    assert model.receive("q")[0].receive_count == 2
    with pytest.raises(InvalidArgument):
        model.nack(message.receipt, delay=-1)


def test_extend_counts_from_now_and_keeps_the_receipt(model, clock):
    model.create_queue("q", visibility_timeout=10)
    model.send("q", b"x")
    [message] = model.receive("q")
    clock.advance(8)
    model.extend(message.receipt, 5)
    clock.advance(4.9)
    model.extend(message.receipt, 1)
    clock.advance(0.9)
    model.ack(message.receipt)
    with pytest.raises(InvalidArgument):
        model.extend(message.receipt, 43_201)


def test_extend_zero_acts_as_nack(model):
    model.create_queue("q")
    model.send_batch("q", [b"a", b"b"])
    [a] = model.receive("q")
    model.extend(a.receipt, 0)
    assert bodies(model.receive("q", max_messages=2)) == [b"b", b"a"]


# -- dead letters -----------------------------------------------------------------------


def test_max_receive_count_dead_letters_at_receive(model, clock):
    model.create_queue("dlq", delay=100)  # the DLQ's delay does not apply
    model.create_queue("q", max_receive_count=2, dead_letter_queue="dlq", visibility_timeout=1)
    sent_at = clock.now
    model.send("q", b"x", attributes={"k": "v"})
    first = model.receive("q")[0]
    clock.advance(1)
    assert model.receive("q")[0].receive_count == 2
    clock.advance(1)
    assert model.receive("q") == []  # a third delivery would exceed max_receive_count
    [dead] = model.receive("dlq", max_messages=10)
    assert (dead.id, dead.body, dead.attributes, dead.timestamp) == (
        first.id, b"x", {"k": "v"}, sent_at)
    assert dead.receive_count == 1  # the DLQ's own count started at 0
    assert dead.dead_letter == DeadLetterInfo(
        reason="max_receives", source_queue="q", receive_count=2,
        first_receive_time=sent_at, last_receive_time=sent_at + 1, time=sent_at + 2)
    stats = queue_stats(model, "q")
    assert (stats.dead_lettered, stats.delivered, stats.redelivered) == (1, 2, 1)
    assert queue_stats(model, "dlq").enqueued == 1


def test_receive_skips_dead_letters_and_fills_its_batch(model):
    model.create_queue("q", max_receive_count=1, visibility_timeout=0)
    model.send_batch("q", [b"a", b"b"])
    model.receive("q")  # a, lease of 0 s ends at the next call
    model.send("q", b"c")
    assert bodies(model.receive("q", max_messages=2)) == [b"b", b"c"]
    assert queue_stats(model, "q").dropped["max_receives"] == 1


def test_term_dead_letters_with_reason_rejected(model, clock):
    model.create_queue("dlq")
    model.create_queue("q", dead_letter_queue="dlq")
    model.create_queue("plain")
    model.send("q", b"x")
    model.send("plain", b"y")
    [message] = model.receive("q")
    model.term(message.receipt)
    [dead] = model.receive("dlq")
    assert dead.dead_letter.reason == "rejected"
    assert dead.dead_letter.last_receive_time == clock.now
    [other] = model.receive("plain")
    model.term(other.receipt)
    stats = queue_stats(model, "plain")
    assert stats.dropped["rejected"] == 1 and stats.dead_lettered == 0


def test_a_full_reject_dead_letter_queue_drops_as_dead_letter_full(model):
    model.create_queue("dlq", max_messages=1)
    model.create_queue("q", dead_letter_queue="dlq")
    model.send("dlq", b"occupant")
    model.send("q", b"x")
    model.term(model.receive("q")[0].receipt)
    stats = queue_stats(model, "q")
    assert stats.dropped["dead_letter_full"] == 1 and stats.dead_lettered == 0
    assert queue_stats(model, "dlq").rejected == 0


def test_a_drop_oldest_dead_letter_queue_makes_room(model):
    model.create_queue("dlq", max_messages=1, overflow="drop_oldest")
    model.create_queue("q", dead_letter_queue="dlq")
    model.send("dlq", b"occupant")
    model.send("q", b"x")
    model.term(model.receive("q")[0].receipt)
    assert bodies(model.receive("dlq")) == [b"x"]
    assert queue_stats(model, "dlq").dropped["overflow"] == 1
    assert queue_stats(model, "q").dead_lettered == 1


def test_redrive(model, clock):
    model.create_queue("dlq")
    model.create_queue("q", dead_letter_queue="dlq")
    model.create_queue("other")
    model.send_batch("q", [b"a", b"b", b"c"])
    for message in model.receive("q", max_messages=3):
        model.term(message.receipt)
    model.send("dlq", b"sent-straight")  # no source queue: skipped
    assert model.redrive("dlq", max_messages=1) == 1
    assert model.redrive("dlq", to="other", max_messages=1) == 1
    assert model.redrive("dlq") == 1
    assert bodies(model.receive("dlq", max_messages=10)) == [b"sent-straight"]
    [a, c] = model.receive("q", max_messages=10)
    assert (a.body, a.receive_count, a.dead_letter) == (b"a", 1, None)
    assert c.body == b"c"
    assert bodies(model.receive("other")) == [b"b"]
    assert queue_stats(model, "dlq").redriven == 3
    with pytest.raises(InvalidArgument):
        model.redrive("dlq", to="dlq")
    with pytest.raises(InvalidArgument):
        model.redrive("dlq", max_messages=0)


def test_redrive_skips_deleted_sources_and_stops_at_a_full_queue(model):
    model.create_queue("dlq")
    model.create_queue("gone", dead_letter_queue="dlq")
    model.create_queue("full", dead_letter_queue="dlq", max_messages=1)
    model.send("gone", b"g")
    model.term(model.receive("gone")[0].receipt)
    model.send("full", b"f")
    model.term(model.receive("full")[0].receipt)
    model.send("full", b"occupant")
    model.send("dlq", b"tail")
    model.delete_queue("gone")
    assert model.redrive("dlq") == 0  # "gone" skipped, "full" stops the redrive
    assert queue_stats(model, "dlq").visible == 3
    assert model.redrive("dlq", to="full") == 0
    assert queue_stats(model, "full").rejected == 0


# -- limits, overflow, retention, purge -------------------------------------------------


def test_reject_refuses_the_whole_publish(model):
    model.create_topic("t")
    model.create_queue("roomy")
    model.create_queue("tight", max_messages=2)
    model.subscribe("t", "roomy")
    model.subscribe("t", "tight")
    model.publish("t", b"1")
    with pytest.raises(QueueFull):
        model.publish_batch("t", [b"2", b"3"])
    assert queue_stats(model, "tight").rejected == 2
    assert queue_stats(model, "roomy").enqueued == 1
    assert model.stats().topics["t"].published == 1
    model.publish("t", b"2")


def test_max_bytes(model):
    model.create_queue("q", max_bytes=5)
    model.send("q", b"123")
    with pytest.raises(QueueFull):
        model.send("q", b"456")
    model.send("q", b"45")
    assert queue_stats(model, "q").bytes == 5


def test_drop_oldest_drops_visible_from_the_head(model):
    model.create_queue("q", max_messages=2, overflow="drop_oldest")
    model.send_batch("q", [b"a", b"b"])
    model.send("q", b"c")
    assert queue_stats(model, "q").dropped["overflow"] == 1
    [b] = model.receive("q")
    model.send("q", b"d")  # "c" is the only visible one
    assert bodies(model.receive("q", max_messages=10)) == [b"d"]
    assert b.body == b"b"


def test_drop_oldest_acts_as_reject_without_enough_visible(model):
    model.create_queue("q", max_messages=2, overflow="drop_oldest")
    model.send("q", b"delayed", delay=5)
    model.send("q", b"visible")
    with pytest.raises(QueueFull):
        model.send_batch("q", [b"x", b"y"])
    stats = queue_stats(model, "q")
    assert (stats.rejected, stats.messages, stats.dropped["overflow"]) == (2, 2, 0)


def test_dead_letter_overflow(model):
    model.create_queue("dlq")
    model.create_queue("q", max_messages=1, overflow="dead_letter", dead_letter_queue="dlq")
    model.send("q", b"old")
    model.send("q", b"new")
    [dead] = model.receive("dlq")
    assert dead.body == b"old" and dead.dead_letter.reason == "overflow"
    assert dead.dead_letter.receive_count == 0 and dead.dead_letter.first_receive_time is None
    assert queue_stats(model, "q").dead_lettered == 1


def test_retention_removes_every_state(model, clock):
    model.create_queue("q", retention=10)
    model.send("q", b"delayed")   # a send's own delay must end before retention: a nack's not
    model.nack(model.receive("q")[0].receipt, delay=20)
    model.send("q", b"leased")
    model.send("q", b"visible")
    model.receive("q")
    clock.advance(9.999999)
    assert queue_stats(model, "q").messages == 3
    assert queue_stats(model, "q").oldest_age == pytest.approx(9.999999)
    clock.advance(0.000001)
    stats = queue_stats(model, "q")
    assert stats.messages == 0 and stats.dropped["retention"] == 3 and stats.oldest_age == 0.0


def test_retention_counts_from_entering_the_queue(model, clock):
    model.create_queue("dlq", retention=10)
    model.create_queue("q", dead_letter_queue="dlq", retention=10)
    model.send("q", b"x")
    clock.advance(9)
    model.term(model.receive("q")[0].receipt)
    clock.advance(9)
    assert queue_stats(model, "dlq").visible == 1


def test_purge(model):
    model.create_queue("q")
    model.send_batch("q", [b"a", b"b"])
    model.send("q", b"c", delay=5)
    [message] = model.receive("q")
    assert model.purge("q") == 3
    with pytest.raises(StaleReceipt):
        model.ack(message.receipt)
    stats = queue_stats(model, "q")
    assert (stats.purged, stats.messages, stats.bytes) == (3, 0, 0)
    assert sum(stats.dropped.values()) == 0


# -- stats and lifecycle ----------------------------------------------------------------


def test_stats_gauges(model, clock):
    model.create_queue("q")
    model.send_batch("q", [b"ab", b"c"])
    model.send("q", b"d", delay=1)
    model.receive("q")
    clock.advance(0.25)
    stats = queue_stats(model, "q")
    assert (stats.visible, stats.leased, stats.delayed, stats.messages) == (1, 1, 1, 3)
    assert stats.bytes == 4 and stats.oldest_age == 0.25
    assert set(stats.dropped) == set(DROP_REASONS)


def test_close(clock):
    with ModelBroker(clock=clock) as model:
        model.create_queue("q")
    assert model.closed
    model.close()
    for call in (model.list_queues, model.stats, lambda: model.send("q", b"x"),
                 lambda: model.receive("bad name", max_messages=0), lambda: model.ack(-1)):
        with pytest.raises(Closed):
            call()


operations = st.lists(st.tuples(
    st.sampled_from(["send", "publish", "receive", "ack", "nack", "term", "extend",
                     "advance", "redrive", "purge"]),
    st.integers(0, 3), st.sampled_from([0.0, 0.5, 1.0, 3.0])), max_size=60)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_random_workloads_lose_nothing(ops):
    clock = Clock()
    model = ModelBroker(clock=clock)
    model.create_queue("dlq", max_messages=3, overflow="drop_oldest")
    model.create_queue("a", max_receive_count=2, dead_letter_queue="dlq", visibility_timeout=1)
    model.create_queue("b", max_messages=2, overflow="dead_letter", dead_letter_queue="dlq",
                       retention=4)
    model.create_queue("c", max_messages=2, delay=0.5)
    model.create_topic("t")
    for name in ("a", "b", "c"):
        model.subscribe("t", name)
    queues = ["a", "b", "c", "dlq"]
    receipts: list[int] = []
    for op, index, seconds in ops:
        queue = queues[index]
        try:
            if op == "send":
                model.send(queue, b"x" * index, delay=seconds or None)
            elif op == "publish":
                model.publish("t", b"y")
            elif op == "receive":
                receipts += [m.receipt for m in model.receive(queue, max_messages=index + 1)]
            elif op == "advance":
                clock.advance(seconds)
            elif op == "redrive":
                model.redrive("dlq", max_messages=index or None)
            elif op == "purge":
                model.purge(queue)
            elif receipts:
                receipt = receipts[-1 - index % len(receipts)]
                if op == "extend":
                    model.extend(receipt, seconds)
                elif op == "nack":
                    model.nack(receipt, delay=seconds)
                else:
                    getattr(model, op)(receipt)
        except (QueueFull, StaleReceipt):
            pass
        assert model.check()
        assert_nothing_lost(model)


def test_redrive_finds_the_source_queue_by_name(model):
    model.create_queue("dlq")
    model.create_queue("q", dead_letter_queue="dlq")
    model.send("q", b"x")
    model.term(model.receive("q")[0].receipt)
    model.delete_queue("q")
    assert model.redrive("dlq") == 0  # no queue of that name: the message stays
    model.create_queue("q")
    assert model.redrive("dlq") == 1
    assert bodies(model.receive("q")) == [b"x"]
