"""Subscriptions resolved into dispatcher targets, alone (fastfanout.semantics.routing)."""

from __future__ import annotations

import pytest

from fastfanout.errors import InvalidArgument, InvalidFilterPolicy
from fastfanout.semantics.routing import compile_policy, dispatch_targets, feeding_subscriptions
from fastfanout.settings import Subscription


def _sub(topic: str, queue: str, policy: dict[str, list[str]] | None = None) -> Subscription:
    compiled, canonical = compile_policy(policy, "attributes")
    return Subscription(topic, queue, canonical, "attributes", compiled)


def test_direct_and_pattern_subscriptions_feed_a_topic_of_their_kind() -> None:
    subs = {3: _sub("orders.new", "a"), 1: _sub("orders.*", "b"), 2: _sub("orders.>", "f"),
            4: _sub("other", "a"), 5: _sub("orders", "b")}
    fifo_queues = {"f"}
    assert feeding_subscriptions(subs, "orders.new", False,
                                 lambda q: q in fifo_queues) == [1, 3]
    assert feeding_subscriptions(subs, "orders.new", True,
                                 lambda q: q in fifo_queues) == [2]   # FIFO topic
    assert feeding_subscriptions(subs, "orders.new.eu", False,
                                 lambda q: q in fifo_queues) == []


def test_one_target_per_queue_whose_policies_are_alternatives() -> None:
    subs = {1: _sub("t", "a", {"k": ["x"]}), 2: _sub("t.*", "a", {"k": ["y"]}),
            3: _sub("t", "b", {"k": ["x"]}), 4: _sub("t.*", "b"), 5: _sub("t", "c")}
    targets, policies, feeders = dispatch_targets(subs, [1, 2, 3, 4, 5],
                                                  {"a": 10, "b": 11, "c": 12})
    assert targets == [10, 11, 12]
    assert feeders == [[1, 2], [3, 4], [5]]
    assert policies[0] == [subs[1].compiled.plain, subs[2].compiled.plain]
    assert policies[1] is None and policies[2] is None   # an unfiltered one takes all


def test_compile_policy_is_canonical_and_checks_its_input() -> None:
    compiled, canonical = compile_policy('{"b": ["1"], "a": ["2"]}', "attributes")
    assert compiled is not None and canonical == '{"a": ["2"], "b": ["1"]}'
    assert compile_policy(None, "body") == (None, None)
    with pytest.raises(InvalidArgument, match="filter_scope"):
        compile_policy(None, "headers")
    with pytest.raises(InvalidFilterPolicy):
        compile_policy({"a": "not a list"}, "attributes")
