"""Filter policies on subscriptions and topic patterns, through the broker (issue 3)."""

import json

import pytest

from fastfanout import (
    AlreadyExists,
    Broker,
    InvalidArgument,
    InvalidFilterPolicy,
    NotFound,
    PublishEntry,
)


def received(broker, queue):
    messages = broker.receive(queue, max_messages=100)
    broker.ack_batch([m.receipt for m in messages])
    return [m.body for m in messages]


@pytest.fixture
def shop(broker):
    broker.create_topic("orders")
    for name in ("all", "big", "eu", "body"):
        broker.create_queue(name)
    broker.subscribe("orders", "all")
    broker.subscribe("orders", "big", filter_policy={"amount": [{"numeric": [">=", 100]}]})
    broker.subscribe("orders", "eu", filter_policy=json.dumps({"region": [{"prefix": "eu-"}]}))
    broker.subscribe("orders", "body", filter_policy={"kind": ["refund"]}, filter_scope="body")
    return broker


def test_each_subscription_gets_what_its_policy_matches(shop):
    shop.publish_batch("orders", [
        PublishEntry(b'{"kind": "sale"}', attributes={"amount": 150, "region": "eu-west"}),
        PublishEntry(b'{"kind": "refund"}', attributes={"amount": 5, "region": "us-east"}),
        PublishEntry(b"not json", attributes={"amount": "150"}),  # a string is not a number
        b"no attributes",
    ])
    assert received(shop, "all") == [b'{"kind": "sale"}', b'{"kind": "refund"}', b"not json",
                                     b"no attributes"]
    assert received(shop, "big") == [b'{"kind": "sale"}']
    assert received(shop, "eu") == [b'{"kind": "sale"}']
    assert received(shop, "body") == [b'{"kind": "refund"}']
    stats = shop.stats().topics["orders"]
    assert stats.published == 4 and stats.deliveries == 7 and stats.filtered_out == 9


def test_result_counts_deliveries_per_message(shop):
    result = shop.publish("orders", b"{}", attributes={"amount": 1000})
    assert result.deliveries == 2
    batch = shop.publish_batch("orders", [PublishEntry(b"{}", attributes={"region": "eu-1"}),
                                          b"plain"])
    assert [r.deliveries for r in batch] == [2, 1]


def test_set_filter_policy_applies_to_the_next_publish(broker):
    broker.create_topic("t")
    broker.create_queue("q")
    sid = broker.subscribe("t", "q", filter_policy={"color": ["red"]})
    broker.publish("t", b"blue", attributes={"color": "blue"})
    broker.set_filter_policy(sid, {"color": ["blue"]})
    broker.publish("t", b"blue again", attributes={"color": "blue"})
    broker.set_filter_policy(sid, None)
    broker.publish("t", b"anything")
    assert received(broker, "q") == [b"blue again", b"anything"]
    assert broker.subscription(sid).filter_policy is None
    with pytest.raises(NotFound):
        broker.set_filter_policy(999, None)


def test_bad_policies_are_refused_and_change_nothing(broker):
    broker.create_topic("t")
    broker.create_queue("q")
    bad_policies = ({"a": []}, {"a": [{"nope": 1}]}, "{not json",
                    {"a": [{"numeric": [">", 5, "<", 1]}]})
    for bad in bad_policies:
        with pytest.raises(InvalidFilterPolicy):
            broker.subscribe("t", "q", filter_policy=bad)
    with pytest.raises(InvalidArgument):
        broker.subscribe("t", "q", filter_policy={"a": ["x"]}, filter_scope="headers")
    assert broker.list_subscriptions() == {}


def test_same_pair_with_another_policy_conflicts(broker):
    broker.create_topic("t")
    broker.create_queue("q")
    sid = broker.subscribe("t", "q", filter_policy={"a": ["x"]})
    assert broker.subscribe("t", "q", filter_policy='{"a": ["x"]}') == sid
    with pytest.raises(AlreadyExists):
        broker.subscribe("t", "q", filter_policy={"a": ["y"]})


def test_topic_patterns_cover_existing_and_future_topics(broker):
    broker.create_queue("star")
    broker.create_queue("tail")
    broker.create_topic("orders.eu")
    broker.subscribe("orders.*", "star")
    broker.subscribe("orders.>", "tail")
    broker.create_topic("orders.us")
    broker.create_topic("orders.us.west")
    broker.create_topic("orders")
    for topic in ("orders.eu", "orders.us", "orders.us.west", "orders"):
        broker.publish(topic, topic.encode())
    assert received(broker, "star") == [b"orders.eu", b"orders.us"]
    assert received(broker, "tail") == [b"orders.eu", b"orders.us", b"orders.us.west"]
    assert broker.stats().topics["orders"].unrouted == 1
    with pytest.raises(InvalidArgument):
        broker.subscribe("orders.>.x", "star")


def test_unsubscribing_a_pattern(broker):
    broker.create_queue("q")
    broker.create_topic("a.b")
    sid = broker.subscribe("a.*", "q")
    broker.unsubscribe(sid)
    assert broker.publish("a.b", b"x").deliveries == 0


def test_unrouted_counts_a_publish_every_queue_held_as_a_duplicate() -> None:
    # As docs/semantics.md says (the Stats section said "published with no subscription").
    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q")
        broker.subscribe("t", "q")
        broker.send("q", b"first", dedup_id="d")
        result = broker.publish("t", b"again", dedup_id="d")
        assert (result.deliveries, result.duplicate) == (0, False)
        topic = broker.stats().topics["t"]
        assert (topic.published, topic.deliveries, topic.unrouted) == (1, 0, 1)
        assert broker.stats().queues["q"].duplicates == 1


def test_a_body_too_deep_for_body_policies_is_filtered_out_not_raised(broker):
    # a body nested beyond MAX_BODY_DEPTH raised RecursionError from publish
    broker.create_topic("deep")
    broker.create_queue("picky")
    broker.create_queue("all")
    broker.subscribe("deep", "picky", filter_policy={"a": [{"exists": True}]},
                     filter_scope="body")
    broker.subscribe("deep", "all")
    body = b'{"a": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}"
    assert broker.publish("deep", body).deliveries == 1
    assert broker.publish("deep", b'{"a": [[1]]}').deliveries == 2
    assert [m.body for m in broker.receive("picky", max_messages=5)] == [b'{"a": [[1]]}']
    assert broker.stats().topics["deep"].filtered_out == 1


def test_set_filter_policy_keeps_the_scope_unless_one_is_given(broker):
    # a new policy for a body-scope subscription silently made it attribute-scope
    broker.create_topic("t")
    broker.create_queue("q")
    sid = broker.subscribe("t", "q", filter_policy={"a": ["x"]}, filter_scope="body")
    broker.set_filter_policy(sid, {"a": ["y"]})
    assert broker.subscription(sid).filter_scope == "body"
    assert broker.publish("t", b'{"a": "y"}').deliveries == 1
    broker.set_filter_policy(sid, {"a": {"b": ["z"]}})         # nested: body scope only
    assert broker.publish("t", b'{"a": {"b": "z"}}').deliveries == 1
    broker.set_filter_policy(sid, {"a": ["y"]}, filter_scope="attributes")
    assert broker.subscription(sid).filter_scope == "attributes"
    assert broker.publish("t", b"", attributes={"a": "y"}).deliveries == 1
    with pytest.raises(InvalidFilterPolicy, match="nested policy objects need scope"):
        broker.set_filter_policy(sid, {"a": {"b": ["z"]}})     # kept scope: attributes
    assert broker.subscription(sid).filter_policy == '{"a": ["y"]}'
