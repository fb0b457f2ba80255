"""Unit tests of the embedded broker's queue and topic semantics (docs/semantics.md)."""

import collections
import math

import pytest

from fastfanout import (
    AlreadyExists,
    Broker,
    Closed,
    DeadLetterInfo,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    PublishEntry,
    PublishResult,
    QueueFull,
    StaleReceipt,
)
from fastfanout.wire.protocol import encode_receipts


def snapshot(broker):
    return broker.stats()


def test_create_is_idempotent_and_conflicts_raise(broker):
    broker.create_queue("q", visibility_timeout=10)
    broker.create_queue("q", visibility_timeout=10)
    with pytest.raises(AlreadyExists, match="other settings"):
        broker.create_queue("q", visibility_timeout=11)
    broker.create_topic("t")
    broker.create_topic("t")
    assert broker.list_queues() == ["q"]
    assert broker.list_topics() == ["t"]
    assert broker.queue_settings("q").visibility_timeout == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"visibility_timeout": -1},
        {"visibility_timeout": math.nan},
        {"visibility_timeout": 43_201},
        {"visibility_timeout": "30"},
        {"delay": math.inf},
        {"retention": 0},
        {"max_messages": 0},
        {"max_bytes": -5},
        {"max_receive_count": 1.5},
        {"max_message_size": 0},
        {"max_message_size": 2**40},
        {"overflow": "explode"},
        {"overflow": "dead_letter"},
        {"max_priority": 256},
        {"dead_letter_queue": "q"},
    ],
)
def test_bad_queue_settings_raise_and_change_nothing(broker, kwargs):
    with pytest.raises(InvalidArgument):
        broker.create_queue("q", **kwargs)
    assert broker.list_queues() == []


@pytest.mark.parametrize("name", ["", "a" * 257, "has space", "slash/no", 5, None, "é"])
def test_bad_names_raise(broker, name):
    with pytest.raises(InvalidArgument):
        broker.create_queue(name)
    with pytest.raises(InvalidArgument):
        broker.create_topic(name)
    assert broker.list_queues() == [] and broker.list_topics() == []


def test_unknown_names_raise_not_found(broker):
    with pytest.raises(NotFound):
        broker.send("nope", b"x")
    with pytest.raises(NotFound):
        broker.publish("nope", b"x")
    with pytest.raises(NotFound):
        broker.receive("nope")
    with pytest.raises(NotFound):
        broker.create_queue("q", dead_letter_queue="missing")
    with pytest.raises(NotFound):
        broker.unsubscribe(99)
    assert broker.list_queues() == []


def test_publish_fans_out_one_copy_per_subscribed_queue(broker):
    broker.create_topic("orders")
    for name in ("a", "b", "c"):
        broker.create_queue(name)
    sub_a = broker.subscribe("orders", "a")
    broker.subscribe("orders", "b")
    assert broker.subscribe("orders", "a") == sub_a  # same pair: same id
    result = broker.publish("orders", b"hello", attributes={"kind": "new", "n": 3})
    assert result == PublishResult(message_id=result.message_id, deliveries=2)
    got_a = broker.receive("a")
    got_b = broker.receive("b")
    assert broker.receive("c") == []
    assert [m.id for m in got_a] == [m.id for m in got_b] == [result.message_id]
    assert got_a[0].body == b"hello" and got_a[0].attributes == {"kind": "new", "n": 3}
    assert got_a[0].queue == "a" and got_a[0].receive_count == 1
    stats = broker.stats()
    assert stats.topics["orders"].published == 1
    assert stats.topics["orders"].deliveries == 2
    assert stats.topics["orders"].subscriptions == 2


def test_unsubscribe_and_unrouted(broker):
    broker.create_topic("t")
    broker.create_queue("q")
    sid = broker.subscribe("t", "q")
    broker.unsubscribe(sid)
    assert broker.publish("t", b"x").deliveries == 0
    assert broker.stats().topics["t"].unrouted == 1
    assert broker.receive("q") == []


def test_message_ids_increase_and_batches_are_sequences(broker):
    broker.create_queue("q")
    batch = broker.send_batch("q", [b"a", bytearray(b"b"), memoryview(b"c"), PublishEntry(b"d")])
    ids = batch.message_ids
    assert ids == sorted(ids) and len(set(ids)) == 4
    assert len(batch) == 4 and batch[-1].message_id == ids[-1]
    assert [r.message_id for r in batch] == ids
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"a", b"b", b"c", b"d"]


@pytest.mark.parametrize(
    "entry",
    [
        "text",
        123,
        PublishEntry(b"x", attributes={"a": True}),
        PublishEntry(b"x", attributes={"a": math.nan}),
        PublishEntry(b"x", attributes={"": "v"}),
        PublishEntry(b"x", attributes={f"k{i}": "v" for i in range(11)}),
        PublishEntry(b"x", attributes={"a": [1, 2]}),
        PublishEntry(b"x", attributes=["not", "a", "dict"]),
        PublishEntry(b"x", delay=-1.0),
        PublishEntry(b"x", delay=1.0, deliver_at=5.0),
        PublishEntry(b"x", priority=300),
        PublishEntry(b"x", group_id=""),
        PublishEntry(b"x", attributes={"a": 10**30}),
        PublishEntry(b"x", attributes={"a": -(2**63) - 1}),
        PublishEntry(b"x", attributes={"a": "\ud800"}),
        PublishEntry(b"x", attributes={"\ud800": "v"}),
        PublishEntry(b"x", attributes={"a": ["ok", "\udc00"]}),
        PublishEntry(b"x", group_id="\ud800"),
        PublishEntry(b"x", dedup_id="\ud800"),
    ],
)
def test_bad_entries_reject_the_whole_batch(broker, entry):
    broker.create_queue("q")
    with pytest.raises(InvalidArgument):
        broker.send_batch("q", [b"good", entry])
    stats = broker.stats().queues["q"]
    assert stats.enqueued == 0 and stats.messages == 0


def test_attributes_at_the_edges_of_their_types(broker):
    broker.create_queue("q")
    edges = {"top": 2**64 - 1, "bottom": -(2**63), "text": "\u00e9\U0001f600"}
    broker.send("q", b"x", attributes=collections.OrderedDict(edges))   # a dict subclass
    for bad in ({"a": 2**64}, {"a": "\ud800"}):
        with pytest.raises(InvalidArgument, match=r"64-bit|Unicode"):
            broker.send("q", b"y", attributes=bad)   # one message, not a batch
    with pytest.raises(InvalidArgument, match="dedup_id"):
        broker.send("q", b"y", dedup_id="\udfff")
    [message] = broker.receive("q", max_messages=10)
    assert message.attributes == edges


def test_queue_full_says_the_policy_and_when_a_batch_never_fits(broker):
    broker.create_queue("small", max_messages=2)
    with pytest.raises(QueueFull, match="overflow is reject; a batch this large never fits"):
        broker.send_batch("small", [b"1", b"2", b"3"])
    broker.create_queue("drops", max_messages=2, overflow="drop_oldest")
    broker.send_batch("drops", [b"1", b"2"])
    broker.receive("drops", max_messages=2)   # both leased: nothing visible to drop
    with pytest.raises(QueueFull, match=r"overflow is drop_oldest \(it makes room from visible"):
        broker.send("drops", b"3")


def test_message_too_large_checks_every_target(broker):
    broker.create_topic("t")
    broker.create_queue("big")
    broker.create_queue("small", max_message_size=10)
    broker.subscribe("t", "big")
    broker.subscribe("t", "small")
    with pytest.raises(MessageTooLarge, match="small"):
        broker.publish("t", b"x" * 11)
    assert broker.stats().queues["big"].messages == 0
    # attributes count towards the size
    with pytest.raises(MessageTooLarge):
        broker.send("small", b"x" * 5, attributes={"k": "vvvvvv"})
    broker.publish("t", b"x" * 10)
    stats = broker.stats().queues
    assert stats["small"].messages == 1 and stats["small"].oversized == 2
    assert stats["big"].oversized == 0


def test_lease_hides_message_and_expiry_redelivers(broker, clock):
    broker.create_queue("q", visibility_timeout=10)
    broker.send("q", b"m")
    first = broker.receive("q")
    assert broker.receive("q") == []
    clock.advance(9.999)
    assert broker.receive("q") == []
    clock.advance(0.001)
    again = broker.receive("q")
    assert [m.id for m in again] == [first[0].id]
    assert again[0].receive_count == 2
    assert again[0].receipt != first[0].receipt
    with pytest.raises(StaleReceipt):
        broker.ack(first[0].receipt)
    broker.ack(again[0].receipt)
    stats = broker.stats().queues["q"]
    assert (stats.delivered, stats.redelivered, stats.acked, stats.messages) == (2, 1, 1, 0)


def test_receive_overrides_visibility_timeout(broker, clock):
    broker.create_queue("q", visibility_timeout=100)
    broker.send("q", b"m")
    broker.receive("q", visibility_timeout=1)
    clock.advance(1)
    assert len(broker.receive("q")) == 1


def test_lease_ends_merge_in_deadline_then_arming_order(broker, clock):
    # Leases in order go to the queue's lease list, a shorter one to the slot heap, a
    # delay to the heap too: whatever their source, ends fire by (deadline, arm order).
    broker.create_queue("q", visibility_timeout=10)
    broker.send_batch("q", [b"a", b"b", b"c", b"d"])
    start = clock.now
    broker.receive("q")                                 # a ends at 10 (list)
    clock.advance(5)
    broker.receive("q", visibility_timeout=5)           # b ends at 10 (heap: before a's end)
    broker.receive("q", visibility_timeout=5)           # c ends at 10 (list again)
    (d,) = broker.receive("q")                          # d ends at 15 (list)
    d.nack(delay=5)                                     # delayed to 10 (heap)
    assert broker.next_due() == start + 10
    clock.advance(5)
    assert [m.body for m in broker.receive("q", max_messages=4)] == [b"a", b"b", b"c", b"d"]
    assert broker.check()


def test_extend_and_acks_keep_the_next_deadline_exact(broker, clock):
    broker.create_queue("q", visibility_timeout=10)
    broker.send_batch("q", [b"a", b"b", b"c"])
    start = clock.now
    a, b, c = broker.receive("q", max_messages=3)
    clock.advance(1)
    a.extend(20)                       # now ends at 21: out of the list order
    assert broker.next_due() == start + 10     # b and c still end at 10
    b.ack()
    c.ack()
    assert broker.next_due() == start + 21
    clock.advance(19.999)
    assert broker.receive("q") == []
    clock.advance(0.001)
    assert [m.body for m in broker.receive("q")] == [b"a"]
    assert broker.check()


def test_stale_and_bad_receipts(broker):
    broker.create_queue("q")
    broker.send("q", b"m")
    (message,) = broker.receive("q")
    for bad in (-1, 2**64, "r", 1.0, None):
        with pytest.raises(InvalidArgument):
            broker.ack(bad)
    with pytest.raises(StaleReceipt):
        broker.ack(message.receipt ^ (1 << 32))
    with pytest.raises(StaleReceipt):
        broker.ack(12345)
    message.ack()
    for call in (broker.ack, broker.term, lambda r: broker.nack(r), lambda r: broker.extend(r, 5)):
        with pytest.raises(StaleReceipt):
            call(message.receipt)


def test_ack_batch_is_atomic(broker):
    broker.create_queue("q")
    broker.send_batch("q", [b"1", b"2", b"3"])
    messages = broker.receive("q", max_messages=3)
    messages[0].ack()
    receipts = [m.receipt for m in messages]
    with pytest.raises(StaleReceipt) as caught:
        broker.ack_batch(receipts)
    assert caught.value.receipts == [receipts[0]]
    assert broker.stats().queues["q"].leased == 2
    broker.ack_batch(receipts[1:] + receipts[1:2])  # a repeat inside one batch acks once
    assert broker.stats().queues["q"].acked == 3
    with pytest.raises(InvalidArgument):
        broker.ack_batch(["x"])


def test_nack_with_and_without_delay(broker, clock):
    broker.create_queue("q")
    broker.send_batch("q", [b"1", b"2"])
    first, second = broker.receive("q", max_messages=2)
    first.nack()
    second.nack(delay=5)
    (again,) = broker.receive("q", max_messages=5)
    assert again.id == first.id and again.receive_count == 2
    assert broker.stats().queues["q"].delayed == 1
    clock.advance(5)
    assert [m.id for m in broker.receive("q")] == [second.id]


def test_returned_messages_go_to_the_tail(broker):
    broker.create_queue("q")
    broker.send_batch("q", [b"1", b"2", b"3"])
    (one,) = broker.receive("q")
    one.nack()
    assert [m.body for m in broker.receive("q", max_messages=3)] == [b"2", b"3", b"1"]


def test_extend(broker, clock):
    broker.create_queue("q", visibility_timeout=10)
    broker.send("q", b"m")
    (message,) = broker.receive("q")
    clock.advance(8)
    message.extend(10)
    clock.advance(9)
    assert broker.receive("q") == []
    message.extend(0)  # like SQS ChangeMessageVisibility(0): visible at once
    assert len(broker.receive("q")) == 1
    with pytest.raises(StaleReceipt):
        message.ack()
    with pytest.raises(InvalidArgument):
        broker.extend(message.receipt, 43_201)


def test_max_receive_count_moves_to_dead_letter_queue(broker, clock):
    broker.create_queue("dlq")
    broker.create_queue("q", max_receive_count=2, dead_letter_queue="dlq", visibility_timeout=1)
    published = broker.send("q", b"poison", attributes={"a": "b"})
    start = clock.now
    broker.receive("q")
    clock.advance(1)
    broker.receive("q")
    clock.advance(1)
    assert broker.receive("q") == []  # third delivery would exceed 2: dead-lettered
    (dead,) = broker.receive("dlq")
    assert dead.id == published.message_id
    assert dead.body == b"poison" and dead.attributes == {"a": "b"}
    assert dead.receive_count == 1
    assert dead.dead_letter == DeadLetterInfo(
        reason="max_receives", source_queue="q", receive_count=2,
        first_receive_time=start, last_receive_time=start + 1, time=start + 2)
    stats = broker.stats().queues
    assert stats["q"].dead_lettered == 1 and stats["q"].messages == 0
    assert stats["dlq"].enqueued == 1


def test_max_receive_count_without_dlq_drops_and_counts(broker, clock):
    broker.create_queue("q", max_receive_count=1, visibility_timeout=1)
    broker.send("q", b"m")
    broker.receive("q")
    clock.advance(1)
    assert broker.receive("q") == []
    assert broker.stats().queues["q"].dropped["max_receives"] == 1


def test_term_dead_letters_at_once(broker):
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.create_queue("plain")
    broker.send("q", b"bad")
    broker.send("plain", b"bad")
    broker.receive("q")[0].term()
    broker.receive("plain")[0].term()
    (dead,) = broker.receive("dlq")
    assert dead.dead_letter.reason == "rejected"
    assert broker.stats().queues["plain"].dropped["rejected"] == 1


def test_redrive_back_to_source_and_elsewhere(broker, clock):
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.create_queue("other")
    broker.send_batch("q", [b"1", b"2", b"3"])
    for message in broker.receive("q", max_messages=3):
        message.term()
    assert broker.redrive("dlq", max_messages=1) == 1
    (back,) = broker.receive("q")
    assert back.body == b"1" and back.receive_count == 1 and back.dead_letter is None
    assert broker.redrive("dlq", to="other") == 2
    assert [m.body for m in broker.receive("other", max_messages=5)] == [b"2", b"3"]
    with pytest.raises(InvalidArgument):
        broker.redrive("dlq", to="dlq")
    stats = broker.stats().queues["dlq"]
    assert stats.redriven == 3 and stats.messages == 0


def test_queue_delay_and_per_message_delay(broker, clock):
    broker.create_queue("q", delay=10)
    broker.send("q", b"queue-delay")
    broker.send("q", b"own-delay", delay=2)
    broker.send("q", b"at", deliver_at=clock.now + 5)
    broker.send("q", b"past", deliver_at=clock.now - 50)
    assert [m.body for m in broker.receive("q", max_messages=9)] == [b"past"]
    clock.advance(2)
    assert [m.body for m in broker.receive("q", max_messages=9)] == [b"own-delay"]
    clock.advance(3)
    assert [m.body for m in broker.receive("q", max_messages=9)] == [b"at"]
    clock.advance(5)
    assert [m.body for m in broker.receive("q", max_messages=9)] == [b"queue-delay"]


def test_retention_removes_messages_in_any_state(broker, clock):
    broker.create_queue("q", retention=60)
    broker.send("q", b"old")
    clock.advance(30)
    broker.send("q", b"new")
    broker.receive("q", visibility_timeout=100)
    clock.advance(30)
    stats = broker.stats().queues["q"]
    assert stats.dropped["retention"] == 1 and stats.messages == 1
    assert [m.body for m in broker.receive("q")] == [b"new"]
    assert broker.stats().queues["q"].oldest_age == 30


def test_overflow_reject_is_atomic_across_targets(broker):
    broker.create_topic("t")
    broker.create_queue("roomy")
    broker.create_queue("tight", max_messages=2)
    broker.subscribe("t", "roomy")
    broker.subscribe("t", "tight")
    broker.publish_batch("t", [b"1", b"2"])
    with pytest.raises(QueueFull, match="tight"):
        broker.publish("t", b"3")
    stats = broker.stats().queues
    assert stats["roomy"].messages == 2 and stats["tight"].rejected == 1
    assert broker.stats().topics["t"].published == 2


def test_overflow_max_bytes(broker):
    broker.create_queue("q", max_bytes=10)
    broker.send("q", b"12345")
    with pytest.raises(QueueFull):
        broker.send_batch("q", [b"123", b"456"])
    broker.send("q", b"12345")
    assert broker.stats().queues["q"].bytes == 10


def test_overflow_drop_oldest(broker):
    broker.create_queue("q", max_messages=3, overflow="drop_oldest")
    broker.send_batch("q", [b"1", b"2", b"3"])
    broker.send("q", b"4")
    assert [m.body for m in broker.receive("q", max_messages=9)] == [b"2", b"3", b"4"]
    # every message leased: nothing visible to drop, so it acts as reject
    with pytest.raises(QueueFull):
        broker.send("q", b"5")
    assert broker.stats().queues["q"].dropped["overflow"] == 1


def test_overflow_dead_letter(broker):
    broker.create_queue("dlq")
    broker.create_queue("q", max_messages=2, overflow="dead_letter", dead_letter_queue="dlq")
    broker.send_batch("q", [b"1", b"2"])
    broker.send("q", b"3")
    (dead,) = broker.receive("dlq")
    assert dead.body == b"1" and dead.dead_letter.reason == "overflow"
    assert broker.stats().queues["q"].dead_lettered == 1


def test_dead_letter_queue_full_counts_drop(broker, clock):
    broker.create_queue("dlq", max_messages=1)
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.send_batch("q", [b"1", b"2"])
    for message in broker.receive("q", max_messages=2):
        message.term()
    stats = broker.stats().queues
    assert stats["dlq"].messages == 1
    assert stats["q"].dead_lettered == 1 and stats["q"].dropped["dead_letter_full"] == 1


def test_purge_removes_all_states(broker):
    broker.create_queue("q")
    broker.send_batch("q", [b"1", b"2"])
    broker.send("q", b"later", delay=100)
    (leased,) = broker.receive("q")
    assert broker.purge("q") == 3
    with pytest.raises(StaleReceipt):
        leased.ack()
    assert broker.stats().queues["q"].purged == 3


def test_delete_queue_rules(broker):
    broker.create_queue("dlq")
    broker.create_queue("q", dead_letter_queue="dlq")
    broker.create_topic("t")
    broker.subscribe("t", "q")
    with pytest.raises(InvalidArgument, match="dead-letter queue of q"):
        broker.delete_queue("dlq")
    broker.send("q", b"x")
    (message,) = broker.receive("q")
    broker.delete_queue("q")
    with pytest.raises(StaleReceipt):
        message.ack()
    assert broker.list_subscriptions() == {}
    assert broker.publish("t", b"y").deliveries == 0
    broker.delete_queue("dlq")
    broker.delete_topic("t")
    assert broker.list_queues() == [] and broker.list_topics() == []


def test_nothing_lost_invariant_holds(broker, clock):
    broker.create_queue("dlq", max_messages=3)
    broker.create_queue("q", max_messages=5, overflow="drop_oldest", max_receive_count=2,
                        dead_letter_queue="dlq", visibility_timeout=1, retention=50)
    for round_number in range(20):
        broker.send_batch("q", [b"x"] * 3)
        for message in broker.receive("q", max_messages=2):
            if round_number % 3 == 0:
                message.ack()
            elif round_number % 3 == 1:
                message.term()
        clock.advance(7)
    for stats in broker.stats().queues.values():
        assert stats.enqueued == (stats.messages + stats.acked + stats.purged + stats.dead_lettered
                                  + stats.redriven + sum(stats.dropped.values()))


def test_closed_broker_refuses_calls(clock):
    broker = Broker(clock=clock)
    broker.create_queue("q")
    broker.close()
    with pytest.raises(Closed):
        broker.send("q", b"x")
    with pytest.raises(Closed):
        broker.stats()


def test_a_closed_broker_and_producer_refuse_a_with_block(clock):
    # until 2026-12-05 `with broker:` after close() entered the block, whose first call
    # then failed; now the with statement itself raises Closed, as every call does
    broker = Broker(clock=clock)
    broker.create_topic("t")
    producer = broker.producer("t")
    producer.close()
    with pytest.raises(Closed), producer:
        pytest.fail("entered a closed producer")
    broker.close()
    with pytest.raises(Closed), broker:
        pytest.fail("entered a closed broker")


def test_bad_clock_values(clock):
    with pytest.raises(InvalidArgument):
        Broker(clock=5)
    broker = Broker(clock=lambda: math.nan)
    with pytest.raises(InvalidArgument):
        broker.list_queues()


def test_message_objects_are_not_user_made():
    from fastfanout import Message

    with pytest.raises(TypeError):
        Message()


def test_receive_argument_checks(broker):
    broker.create_queue("q")
    for kwargs in ({"max_messages": 0}, {"max_messages": 10_001}, {"wait": -1}, {"wait": 21},
                   {"visibility_timeout": -1}):
        with pytest.raises(InvalidArgument):
            broker.receive("q", **kwargs)


def test_hold_queue_refuses_like_reject_and_says_so(broker):
    broker.create_queue("held", max_messages=1, overflow="hold")
    broker.create_queue("tight", max_messages=1)
    broker.create_topic("t")
    broker.subscribe("t", "held")
    broker.publish("t", b"1")
    with pytest.raises(QueueFull, match="overflow is hold") as held:
        broker.publish("t", b"2")
    assert held.value.hold is True
    broker.send("tight", b"1")
    with pytest.raises(QueueFull, match="overflow is reject") as rejected:
        broker.send("tight", b"2")
    assert rejected.value.hold is False
    stats = broker.stats().queues
    assert (stats["held"].messages, stats["held"].rejected) == (1, 1)
    assert broker.queue_settings("held").overflow == "hold"


def test_next_due_in_counts_from_the_broker_clock(broker, clock):
    assert broker.next_due_in() is None
    broker.create_queue("q", visibility_timeout=10)
    broker.send("q", b"later", delay=3)
    assert broker.next_due_in() == 3
    clock.advance(2.5)
    assert broker.next_due_in() == 0.5
    broker.receive("q")                 # not visible yet: nothing leased
    clock.advance(1.0)
    assert broker.next_due_in() == 0    # due, and not applied by asking: still 0
    assert broker.next_due_in() == 0
    assert [m.body for m in broker.receive("q")] == [b"later"]
    assert broker.next_due_in() == 10   # the lease's end


def test_ack_frames_acks_each_frame_all_or_none(broker):
    broker.create_queue("q")
    broker.send_batch("q", [b"a", b"b", b"c", b"d"])
    a, b, c, d = broker.receive("q", max_messages=4)
    a.ack()
    frames = [encode_receipts([a.receipt, b.receipt]), encode_receipts([c.receipt]),
              encode_receipts([d.receipt])]
    with pytest.raises(InvalidArgument):        # a malformed frame: nothing is acked
        broker.server_port().ack_frames([frames[1], b"\x00" * 5])
    assert broker.server_port().ack_frames(frames) == [a.receipt]   # b stays leased with its frame
    stats = broker.stats().queues["q"]
    assert stats.acked == 3 and stats.leased == 1


def test_next_due_in_reports_a_broken_clock(clock):
    broker = Broker(clock=lambda: float("nan") if clock.now < 0 else clock.now)
    broker.create_queue("q")
    broker.send("q", b"later", delay=1)
    clock.now = -1.0
    with pytest.raises(InvalidArgument, match="clock"):
        broker.next_due_in()


@pytest.mark.parametrize(("call", "args", "kwargs", "expected"), [
    ("create_queue", ("q",), {"visiblity_timeout": 3.0},
     "Broker.create_queue() got an unexpected keyword argument 'visiblity_timeout'"),
    ("create_topic", (), {}, "Broker.create_topic() missing a required argument: 'name'"),
    ("subscribe", ("t", "q", None, None, None, None), {},
     "Broker.subscribe() too many positional arguments"),
])
def test_a_wrong_call_of_an_administration_method_names_the_brokers_method(
        call: str, args: tuple[object, ...], kwargs: dict[str, object],
        expected: str) -> None:
    # Python named the part the broker holds ("Administration.create_queue() got an
    # unexpected keyword argument"): the user called Broker's method
    with Broker() as broker:
        broker.create_queue("q")
        before = (broker.list_topics(), broker.list_queues(), broker.queue_settings("q"))
        with pytest.raises(TypeError) as raised:
            getattr(broker, call)(*args, **kwargs)
        assert str(raised.value).startswith(expected)
        assert "Administration" not in str(raised.value)
        assert (broker.list_topics(), broker.list_queues(),
                broker.queue_settings("q")) == before


def test_a_type_error_from_within_an_administration_call_is_left_as_it_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fastfanout.broker import administration

    def broken(kind: str, name: object) -> None:
        raise TypeError("from within")

    monkeypatch.setattr(administration, "check_name", broken)
    with Broker() as broker, pytest.raises(TypeError, match=r"^from within$"):
        broker.create_topic("t")
