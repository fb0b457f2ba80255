"""Per-subscription counters (``BrokerStats.subscriptions``), native broker and model alike."""

import pytest

from fastfanout import Broker, MessageTooLarge, PublishEntry, QueueFull, SubscriptionStats
from fastfanout.model import ModelBroker
from fastfanout.stats import SUBSCRIPTION_DROP_REASONS


@pytest.fixture(params=["native", "model"])
def any_broker(request, clock):
    if request.param == "model":
        yield ModelBroker(clock=clock)
        return
    with Broker(clock=clock) as broker:
        yield broker
        assert broker.check()


def dropped(rejected=0, oversized=0, duplicates=0):
    return {"rejected": rejected, "oversized": oversized, "duplicates": duplicates}


def test_every_drop_reason_is_present_on_a_new_subscription(any_broker):
    any_broker.create_topic("t")
    any_broker.create_queue("q")
    sid = any_broker.subscribe("t", "q")
    assert any_broker.stats().subscriptions == {
        sid: SubscriptionStats(topic="t", queue="q", delivered=0, filtered_out=0,
                               dropped=dict.fromkeys(SUBSCRIPTION_DROP_REASONS, 0))}


def test_two_policies_one_matching_one_not(any_broker):
    any_broker.create_topic("orders")
    any_broker.create_queue("eu")
    any_broker.create_queue("us")
    eu = any_broker.subscribe("orders", "eu", filter_policy={"region": ["eu"]})
    us = any_broker.subscribe("orders", "us", filter_policy={"region": ["us"]})
    any_broker.publish("orders", b"1", attributes={"region": "eu"})
    any_broker.publish_batch("orders", [
        PublishEntry(b"2", attributes={"region": "eu"}),
        PublishEntry(b"3", attributes={"region": "eu"}),
        PublishEntry(b"4", attributes={"region": "us"}),
        b"5"])   # no attributes: neither matches
    stats = any_broker.stats()
    assert stats.subscriptions[eu] == SubscriptionStats(
        topic="orders", queue="eu", delivered=3, filtered_out=2, dropped=dropped())
    assert stats.subscriptions[us] == SubscriptionStats(
        topic="orders", queue="us", delivered=1, filtered_out=4, dropped=dropped())
    # The topic's counters are the sums of its subscriptions'.
    assert stats.topics["orders"].filtered_out == 6
    assert stats.topics["orders"].deliveries == 4
    assert stats.queues["eu"].enqueued == 3 and stats.queues["us"].enqueued == 1


def test_a_full_queue_counts_the_refused_copies_on_its_subscription(any_broker):
    any_broker.create_topic("t")
    any_broker.create_queue("small", max_messages=2)
    any_broker.create_queue("big")
    small = any_broker.subscribe("t", "small")
    big = any_broker.subscribe("t", "big")
    any_broker.publish_batch("t", [b"1", b"2"])
    with pytest.raises(QueueFull):
        any_broker.publish_batch("t", [b"3", b"4", b"5"])
    with pytest.raises(QueueFull):
        any_broker.publish("t", b"6")
    stats = any_broker.stats()
    assert stats.subscriptions[small].delivered == 2
    assert stats.subscriptions[small].dropped == dropped(rejected=4)
    # Nothing of a refused publish is enqueued anywhere: the other one only has the 2.
    assert stats.subscriptions[big].delivered == 2
    assert stats.subscriptions[big].dropped == dropped()
    assert stats.queues["small"].rejected == 4


def test_a_copy_the_queue_window_holds_is_a_duplicate_of_its_subscription(any_broker):
    any_broker.create_topic("a")
    any_broker.create_topic("b")
    any_broker.create_queue("q")
    from_a = any_broker.subscribe("a", "q")
    from_b = any_broker.subscribe("b", "q")
    any_broker.publish("a", b"x", dedup_id="d1")
    any_broker.publish("b", b"x", dedup_id="d1")   # new to topic b, not to queue q
    any_broker.publish_batch("b", [PublishEntry(b"y", dedup_id="d1"),
                                   PublishEntry(b"z", dedup_id="d2")])
    stats = any_broker.stats()
    assert stats.subscriptions[from_a] == SubscriptionStats(
        topic="a", queue="q", delivered=1, filtered_out=0, dropped=dropped())
    # The batch's "d1" is a duplicate of topic b's window (not a copy at all).
    assert stats.subscriptions[from_b] == SubscriptionStats(
        topic="b", queue="q", delivered=1, filtered_out=0, dropped=dropped(duplicates=1))
    assert stats.queues["q"].duplicates == 1
    assert stats.topics["b"].duplicates == 1


def test_an_oversized_copy_counts_on_its_subscription(any_broker):
    any_broker.create_topic("t")
    any_broker.create_queue("tiny", max_message_size=4)
    sid = any_broker.subscribe("t", "tiny")
    with pytest.raises(MessageTooLarge):
        any_broker.publish("t", b"too long")
    any_broker.publish("t", b"ok")
    assert any_broker.stats().subscriptions[sid].dropped == dropped(oversized=1)
    assert any_broker.stats().subscriptions[sid].delivered == 1


def test_a_pattern_counts_over_its_topics_and_a_queue_fed_twice_credits_both(any_broker):
    any_broker.create_topic("orders.eu")
    any_broker.create_topic("orders.us")
    any_broker.create_queue("q")
    pattern = any_broker.subscribe("orders.*", "q")
    direct = any_broker.subscribe("orders.eu", "q", filter_policy={"k": ["v"]})
    any_broker.publish("orders.eu", b"1")
    any_broker.publish("orders.us", b"2")
    stats = any_broker.stats()
    assert stats.subscriptions[pattern].delivered == 2
    # One copy went into q from orders.eu (the pattern let it through): both are credited.
    assert stats.subscriptions[direct].delivered == 1
    assert stats.subscriptions[direct].filtered_out == 0
    assert stats.queues["q"].enqueued == 2


def test_counters_go_with_the_subscription_and_survive_a_policy_change(any_broker):
    any_broker.create_topic("t")
    any_broker.create_queue("q")
    sid = any_broker.subscribe("t", "q", filter_policy={"k": ["v"]})
    any_broker.publish("t", b"1")
    any_broker.set_filter_policy(sid, None)
    any_broker.publish("t", b"2")
    assert (any_broker.stats().subscriptions[sid].filtered_out,
            any_broker.stats().subscriptions[sid].delivered) == (1, 1)
    any_broker.unsubscribe(sid)
    assert any_broker.stats().subscriptions == {}
    again = any_broker.subscribe("t", "q")
    assert again != sid
    assert any_broker.stats().subscriptions[again].delivered == 0
    any_broker.delete_queue("q")
    assert any_broker.stats().subscriptions == {}


def test_counts_stay_when_the_topics_routes_change(any_broker):
    any_broker.create_topic("orders.eu")
    any_broker.create_queue("q")
    any_broker.create_queue("other")
    pattern = any_broker.subscribe("orders.*", "q", filter_policy={"k": ["v"]})
    any_broker.publish("orders.eu", b"1", attributes={"k": "v"})
    any_broker.publish("orders.eu", b"2")
    direct = any_broker.subscribe("orders.eu", "other")   # the topic's targets change
    any_broker.publish("orders.eu", b"3", attributes={"k": "v"})
    any_broker.create_topic("orders.us")
    any_broker.publish("orders.us", b"4")
    any_broker.delete_topic("orders.eu")   # the pattern stays, with what it counted
    stats = any_broker.stats()
    assert sorted(stats.subscriptions) == [pattern]
    assert (stats.subscriptions[pattern].delivered,
            stats.subscriptions[pattern].filtered_out) == (2, 2)
    any_broker.publish("orders.us", b"5", attributes={"k": "v"})
    assert any_broker.stats().subscriptions[pattern].delivered == 3
    assert direct not in any_broker.stats().subscriptions
