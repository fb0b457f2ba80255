"""FIFO groups, deduplication, priorities, schedules, backoff and TTL (issue 3)."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from fastfanout import (
    AlreadyExists,
    Broker,
    ExponentialBackoff,
    InvalidArgument,
    PublishEntry,
    QueueFull,
)


def bodies(messages):
    return [m.body for m in messages]


# -- FIFO ---------------------------------------------------------------------------------


def test_fifo_needs_group_and_dedup_id(broker):
    broker.create_queue("f", fifo=True)
    with pytest.raises(InvalidArgument, match="group_id"):
        broker.send("f", b"x", dedup_id="d")
    with pytest.raises(InvalidArgument, match="dedup_id"):
        broker.send("f", b"x", group_id="g")
    broker.create_queue("fc", fifo=True, content_dedup=True)
    broker.send("fc", b"x", group_id="g")
    assert broker.stats().queues["f"].enqueued == 0
    with pytest.raises(InvalidArgument):
        broker.create_queue("fp", fifo=True, max_priority=3)


def test_fifo_one_leased_message_per_group(broker):
    broker.create_queue("f", fifo=True, content_dedup=True)
    broker.send_batch("f", [PublishEntry(f"a{n}".encode(), group_id="a") for n in range(3)]
                      + [PublishEntry(f"b{n}".encode(), group_id="b") for n in range(2)])
    first = broker.receive("f", max_messages=10)
    assert bodies(first) == [b"a0", b"b0"]  # one per group
    assert broker.receive("f", max_messages=10) == []
    assert broker.stats().queues["f"].groups == 2
    first[0].ack()
    assert bodies(broker.receive("f", max_messages=10)) == [b"a1"]
    first[1].nack()  # the same message comes back first in its group
    assert bodies(broker.receive("f", max_messages=10)) == [b"b0"]


def test_fifo_expired_lease_returns_same_message_first(broker, clock):
    broker.create_queue("f", fifo=True, content_dedup=True, visibility_timeout=5)
    broker.send_batch("f", [PublishEntry(b"1", group_id="g"), PublishEntry(b"2", group_id="g")])
    (one,) = broker.receive("f", max_messages=5)
    clock.advance(5)
    (again,) = broker.receive("f", max_messages=5)
    assert again.id == one.id and again.receive_count == 2
    again.ack()
    assert bodies(broker.receive("f")) == [b"2"]


def test_fifo_order_kept_across_dead_lettering(broker, clock):
    broker.create_queue("dlq", fifo=True, content_dedup=True)
    broker.create_queue("f", fifo=True, content_dedup=True, max_receive_count=1,
                        dead_letter_queue="dlq", visibility_timeout=1)
    broker.send_batch("f", [PublishEntry(f"{n}".encode(), group_id="g") for n in range(3)])
    for expected in (b"0", b"1", b"2"):
        assert bodies(broker.receive("f")) == [expected]
        clock.advance(1)
    assert broker.receive("f") == []
    assert bodies(broker.receive("dlq", max_messages=5)) == [b"0"]
    assert broker.stats().queues["f"].groups == 0


def test_redrive_of_a_fifo_dead_letter_queue_moves_every_visible_message(broker):
    # It moved one message per group and call (a FIFO queue lists only its groups'
    # heads), where the docs promise every visible message and stats counted them all.
    broker.create_queue("dlq", fifo=True, content_dedup=True)
    broker.create_queue("f", fifo=True, content_dedup=True, max_receive_count=1,
                        dead_letter_queue="dlq")
    broker.send_batch("f", [PublishEntry(f"{g}{n}".encode(), group_id=g)
                            for g in "ab" for n in range(3)])
    for _ in range(3):
        for message in broker.receive("f", max_messages=10):
            message.term()
    assert broker.stats().queues["dlq"].visible == 6
    (leased,) = broker.receive("dlq")   # a0: its lease keeps it out of the redrive
    assert leased.body == b"a0"
    assert broker.redrive("dlq") == 5
    assert broker.stats().queues["dlq"].messages == 1
    order: dict[str, list[bytes]] = {"a": [], "b": []}
    while got := broker.receive("f", max_messages=10):
        for message in got:
            order[message.group_id].append(message.body)
            message.ack()
    assert order == {"a": [b"a1", b"a2"], "b": [b"b0", b"b1", b"b2"]}


def test_messages_without_a_group_in_a_fifo_queue_form_one_group(broker, clock):
    # A standard queue's FIFO dead-letter queue, and a redrive to a FIFO queue, take
    # messages that have no group_id: as documented, they are one group of their own.
    broker.create_queue("fdlq", fifo=True, content_dedup=True)
    broker.create_queue("s", dead_letter_queue="fdlq", max_receive_count=1)
    broker.create_queue("f", fifo=True, content_dedup=True)
    broker.send_batch("s", [b"0", b"1"])
    for message in broker.receive("s", max_messages=2):
        message.term()
    broker.send("f", b"grouped", group_id="g")
    assert broker.redrive("fdlq", to="f") == 2
    assert broker.stats().queues["f"].groups == 2
    got = broker.receive("f", max_messages=10)
    assert [(m.body, m.group_id) for m in got] == [(b"grouped", "g"), (b"0", None)]
    assert broker.receive("f", max_messages=10) == []   # b"1" waits behind b"0"
    got[1].ack()
    assert bodies(broker.receive("f", max_messages=10)) == [b"1"]


@pytest.mark.parametrize("overflow", ["drop_oldest", "dead_letter"])
def test_a_full_fifo_queue_makes_room_from_group_heads_only_and_says_so(broker, overflow):
    # The refusal said the rest were "leased or delayed" while two of them were visible,
    # waiting behind their group's leased head (stats count them visible).
    broker.create_queue("dlq")
    broker.create_queue("f", fifo=True, content_dedup=True, max_messages=3,
                        overflow=overflow, dead_letter_queue="dlq")
    broker.send_batch("f", [PublishEntry(f"a{n}".encode(), group_id="a") for n in range(3)])
    (leased,) = broker.receive("f")
    with pytest.raises(QueueFull, match="wait behind their group's head"):
        broker.send("f", b"a3", group_id="a")
    stats = broker.stats().queues["f"]
    assert (stats.visible, stats.leased, stats.rejected) == (2, 1, 1)
    leased.ack()
    broker.send("f", b"a3", group_id="a")   # room again once a0 is acked
    assert broker.stats().queues["f"].messages == 3


def test_fifo_topic_feeds_fifo_queues_only(broker):
    broker.create_topic("ft", fifo=True)
    broker.create_topic("st")
    broker.create_queue("fq", fifo=True)
    broker.create_queue("sq")
    with pytest.raises(InvalidArgument):
        broker.subscribe("ft", "sq")
    with pytest.raises(InvalidArgument):
        broker.subscribe("st", "fq")
    broker.subscribe("ft", "fq")
    with pytest.raises(InvalidArgument, match="group_id"):
        broker.publish("ft", b"x", dedup_id="1")
    result = broker.publish("ft", b"x", group_id="g", dedup_id="1")
    assert result.deliveries == 1


def test_many_groups_proceed_in_parallel(broker):
    broker.create_queue("f", fifo=True, content_dedup=True)
    broker.send_batch("f", [PublishEntry(f"{g}-{n}".encode(), group_id=f"g{g}")
                            for n in range(3) for g in range(100)])
    seen: dict[str, list[int]] = {}
    while True:
        messages = broker.receive("f", max_messages=64)
        if not messages:
            break
        assert len({m.group_id for m in messages}) == len(messages)
        for message in messages:
            group, number = message.body.decode().split("-")
            seen.setdefault(group, []).append(int(number))
        broker.ack_batch([m.receipt for m in messages])
    assert seen == {str(g): [0, 1, 2] for g in range(100)}
    assert broker.stats().queues["f"].groups == 0


# -- deduplication ------------------------------------------------------------------------


def test_dedup_id_on_a_standard_queue(broker, clock):
    broker.create_queue("q", dedup_window=60)
    first = broker.send("q", b"x", dedup_id="order-1")
    again = broker.send("q", b"different body", dedup_id="order-1")
    assert again.duplicate and again.message_id == first.message_id and again.deliveries == 0
    assert broker.stats().queues["q"].messages == 1
    broker.receive("q")[0].ack()  # the window outlives the message
    assert broker.send("q", b"x", dedup_id="order-1").duplicate
    clock.advance(60)
    assert not broker.send("q", b"x", dedup_id="order-1").duplicate
    stats = broker.stats().queues["q"]
    assert stats.duplicates == 2 and stats.dedup_entries == 1


def test_content_dedup_and_duplicates_inside_one_batch(broker):
    broker.create_queue("q", content_dedup=True)
    entries = [b"same", b"other", b"same", PublishEntry(b"same", dedup_id="x")]
    batch = broker.send_batch("q", entries)
    assert [r.duplicate for r in batch] == [False, False, True, False]
    assert batch[2].message_id == batch[0].message_id
    assert bodies(broker.receive("q", max_messages=9)) == [b"same", b"other", b"same"]


def test_topic_level_dedup(broker):
    broker.create_topic("t", content_dedup=True)
    broker.create_queue("a")
    broker.create_queue("b")
    broker.subscribe("t", "a")
    broker.subscribe("t", "b")
    first = broker.publish("t", b"hello")
    second = broker.publish("t", b"hello")
    assert second.duplicate and second.message_id == first.message_id
    stats = broker.stats()
    assert stats.topics["t"].duplicates == 1 and stats.topics["t"].published == 1
    assert stats.queues["a"].messages == 1 and stats.queues["b"].messages == 1


def test_dedup_ids_survive_a_failed_batch(broker):
    broker.create_queue("q", max_messages=1)
    with pytest.raises(QueueFull):
        broker.send_batch("q", [PublishEntry(b"1", dedup_id="a"), PublishEntry(b"2", dedup_id="b")])
    assert not broker.send("q", b"1", dedup_id="a").duplicate  # nothing was remembered


# -- priorities ---------------------------------------------------------------------------


def test_priorities_higher_first_fifo_within_level(broker):
    broker.create_queue("p", max_priority=5)
    broker.send("p", b"low-1", priority=1)
    broker.send("p", b"high", priority=5)
    broker.send("p", b"low-2", priority=1)
    broker.send("p", b"capped", priority=200)  # above the maximum counts as the maximum
    broker.send("p", b"none")
    assert bodies(broker.receive("p", max_messages=9)) == [
        b"high", b"capped", b"low-1", b"low-2", b"none"]
    received = broker.receive  # priority is reported back
    broker.send("p", b"again", priority=3)
    assert received("p")[0].priority == 3


def test_drop_oldest_takes_the_lowest_priority_first(broker):
    broker.create_queue("p", max_priority=2, max_messages=2, overflow="drop_oldest")
    broker.send("p", b"high", priority=2)
    broker.send("p", b"low", priority=0)
    broker.send("p", b"new", priority=1)
    assert bodies(broker.receive("p", max_messages=9)) == [b"high", b"new"]


# -- schedules, backoff, TTL --------------------------------------------------------------


def test_deliver_at_datetime_and_long_delays(clock):
    clock.now = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
    broker = Broker(clock=clock)
    broker.create_queue("q", retention=365 * 86400)
    at = datetime(2026, 1, 1, 1, tzinfo=timezone(timedelta(hours=0)))
    broker.send("q", b"in an hour", deliver_at=at)
    broker.send("q", b"in 300 days", delay=300 * 86400)
    with pytest.raises(InvalidArgument, match="aware"):
        broker.send("q", b"naive", deliver_at=datetime(2026, 1, 1))
    with pytest.raises(InvalidArgument):
        broker.send("q", b"too far", delay=400 * 86400)
    clock.advance(3599.999)
    assert broker.receive("q") == []
    clock.advance(0.001)
    (hour,) = broker.receive("q")
    assert hour.body == b"in an hour"
    hour.ack()
    clock.advance(300 * 86400)
    assert bodies(broker.receive("q")) == [b"in 300 days"]


def test_redelivery_backoff_on_nack_and_expiry(broker, clock):
    broker.create_queue("q", visibility_timeout=10, redelivery_backoff=(1, 5))
    broker.send("q", b"m")
    broker.receive("q")[0].nack()  # failed delivery 1: wait 1 s
    assert broker.receive("q") == []
    clock.advance(1)
    assert len(broker.receive("q")) == 1
    clock.advance(10)  # lease expires: failed delivery 2, wait 5 s from the lease end
    clock.advance(4.999)
    assert broker.receive("q") == []
    clock.advance(0.001)
    (third,) = broker.receive("q")
    third.nack(delay=0)  # an explicit delay overrides the backoff
    assert bodies(broker.receive("q")) == [b"m"]


def test_exponential_backoff_settings(broker):
    backoff = ExponentialBackoff(initial=1, multiplier=3, maximum=20)
    assert backoff.steps() == (1, 3, 9, 20)
    broker.create_queue("q", redelivery_backoff=backoff)
    broker.create_queue("q", redelivery_backoff=backoff)
    with pytest.raises(AlreadyExists):
        broker.create_queue("q", redelivery_backoff=(1, 2))
    for bad in ((), (-1,), "1,2", ExponentialBackoff(initial=0)):
        with pytest.raises(InvalidArgument):
            broker.create_queue("r", redelivery_backoff=bad)


def test_ttl_expires_at_the_head(broker, clock):
    broker.create_queue("dlq")
    broker.create_queue("with-dlq", dead_letter_queue="dlq")
    broker.create_queue("plain")
    for queue in ("with-dlq", "plain"):
        broker.send(queue, b"short", ttl=5)
        broker.send(queue, b"long", ttl=50)
    clock.advance(5)
    assert bodies(broker.receive("plain", max_messages=5)) == [b"long"]
    assert bodies(broker.receive("with-dlq", max_messages=5)) == [b"long"]
    (dead,) = broker.receive("dlq")
    assert dead.dead_letter.reason == "expired" and dead.body == b"short"
    clock.advance(100)  # lease over; a dead-lettered copy never expires again
    assert bodies(broker.receive("dlq")) == [b"short"]
    assert broker.stats().queues["plain"].dropped["expired"] == 1
    with pytest.raises(InvalidArgument):
        broker.send("plain", b"x", ttl=0)


def test_a_content_dedup_fifo_topic_feeds_a_fifo_queue_without_content_dedup(broker):
    # the FIFO queue refused every publish without a dedup_id ("needs a dedup_id"), though
    # the topic deduplicates by content: SNS FIFO hands its content-based id to SQS FIFO
    broker.create_topic("orders", fifo=True, content_dedup=True)
    broker.create_topic("refunds", fifo=True, content_dedup=True)
    broker.create_queue("billing", fifo=True)
    broker.subscribe("orders", "billing")
    broker.subscribe("refunds", "billing")
    first = broker.publish("orders", b"order 1", group_id="g")
    assert (first.deliveries, first.duplicate) == (1, False)
    again = broker.publish("orders", b"order 1", group_id="g")          # topic window
    assert (again.message_id, again.duplicate) == (first.message_id, True)
    assert broker.publish("refunds", b"order 1", group_id="g").deliveries == 0  # queue's
    assert broker.publish("refunds", b"order 2", group_id="g").deliveries == 1
    stats = broker.stats().queues["billing"]
    assert (stats.enqueued, stats.duplicates, stats.dedup_entries) == (2, 1, 2)
    with pytest.raises(InvalidArgument, match="dedup_id"):
        broker.send("billing", b"order 3", group_id="g")      # a send has no topic's key
    assert [m.body for m in broker.receive("billing")] == [b"order 1"]
