"""Queues fed twice by one topic, under subscription churn: the native broker against the model.

A queue subscribed to a topic directly and through patterns (``a.*``, ``a.>``, ``*.b``),
each subscription with its own filter policy (changed now and then), gets one copy of a
message when any of them lets it through, and every subscription feeding it is credited.
Since 2026-12-06 a subscription that comes to such a queue, one that goes while the
queue's first stays, or a new filter policy of one of them changes that target in place
(``Dispatcher.replace_target``) instead of rebuilding the topic's targets. Random
sequences of subscribes, unsubscribes, policy changes and publishes run on the native
broker and on ``ModelBroker``; the outcomes, every counter (``stats()``, the
subscriptions' included) and, at the end, every queue's messages must agree, and the
native broker's invariants must hold after each step.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_broker_model import outcome

from fastfanout import Broker, PublishEntry
from fastfanout.model import ModelBroker

QUEUES = ("q0", "q1", "q2")
TOPICS = ("a.b", "a.*", "a.>", "*.b")
POLICIES: tuple[dict[str, Any] | None, ...] = (
    None, {"k": ["x"]}, {"k": ["y"]}, {"k": ["x", "z"]}, {"k": [{"prefix": "z"}]})
KINDS = ("x", "y", "z", "zz", None)

subscribes = st.tuples(st.just("subscribe"), st.sampled_from(TOPICS), st.sampled_from(QUEUES),
                       st.integers(0, len(POLICIES) - 1))
unsubscribes = st.tuples(st.just("unsubscribe"), st.integers(0, 7))
policy_changes = st.tuples(st.just("set_filter_policy"), st.integers(0, 7),
                           st.integers(0, len(POLICIES) - 1))
publishes = st.tuples(st.just("publish"), st.lists(st.sampled_from(KINDS), min_size=1,
                                                   max_size=4))
steps = st.lists(st.one_of(subscribes, subscribes, unsubscribes, policy_changes, publishes),
                 min_size=1, max_size=30)


def _same(real: tuple[str, Any], model: tuple[str, Any], what: str) -> None:
    assert real[0] == model[0], (what, real, model)
    if real[0] == "error":
        assert type(real[1]) is type(model[1]), (what, real, model)
    else:
        assert real[1] == model[1], (what, real, model)


def _published(broker: Any, entries: list[PublishEntry]) -> list[int]:
    return [result.message_id for result in broker.publish_batch("a.b", entries)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps)
def test_a_queue_fed_twice_under_churn_agrees_with_the_model(plan: list[tuple[Any, ...]]
                                                              ) -> None:
    clock = lambda: 1_000_000.0   # noqa: E731 - one fixed instant for both
    model = ModelBroker(clock=clock)
    with Broker(clock=clock) as real:
        for broker in (real, model):
            broker.create_topic("a.b")
            for queue in QUEUES:
                broker.create_queue(queue)
        live: list[int] = []   # subscription ids, the same on both
        sent = 0
        for step in plan:
            if step[0] == "subscribe":
                _, topic, queue, policy = step
                got = outcome(partial(real.subscribe, topic, queue,
                                      filter_policy=POLICIES[policy]))
                _same(got, outcome(partial(model.subscribe, topic, queue,
                                           filter_policy=POLICIES[policy])), step)
                if got[0] == "ok" and got[1] not in live:
                    live.append(got[1])
            elif step[0] == "unsubscribe":
                if not live:
                    continue
                sid = live.pop(step[1] % len(live))
                _same(outcome(partial(real.unsubscribe, sid)),
                      outcome(partial(model.unsubscribe, sid)), step)
            elif step[0] == "set_filter_policy":
                if not live:
                    continue
                sid = live[step[1] % len(live)]
                policy = POLICIES[step[2]]
                _same(outcome(partial(real.set_filter_policy, sid, policy)),
                      outcome(partial(model.set_filter_policy, sid, policy)), step)
            else:
                entries = []
                for kind in step[1]:
                    sent += 1
                    entries.append(PublishEntry(b"m%d" % sent,
                                                attributes=None if kind is None
                                                else {"k": kind}))
                _same(outcome(partial(_published, real, entries)),
                      outcome(partial(_published, model, entries)), step)
            assert real.stats().subscriptions == model.stats().subscriptions, step
            assert real.stats().queues == model.stats().queues, step
            assert real.check()
        for queue in QUEUES:
            got_bodies = sorted(m.body for m in real.receive(queue, max_messages=1000))
            expected_bodies = sorted(m.body for m in model.receive(queue, max_messages=1000))
            assert got_bodies == expected_bodies, queue
