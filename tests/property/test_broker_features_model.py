"""The native broker against the reference model on the issue-3 features (state machine).

FIFO queues and topics with group and dedup ids, content dedup, small dedup windows with
clock advances across them, priority queues, delays and ``deliver_at`` (float and aware
datetime), TTLs, redelivery backoff, filter policies (a few fixed ones, both scopes),
``set_filter_policy`` and a pattern subscription. Both brokers read one fake clock and
get the same calls; every return value, error class and ``stats()`` must agree after
every step, and both sides' invariants must hold.

Four divergences this machine found (body and dedup-id keys meeting, expired dedup keys
still counted, ``extend(0)`` and the backoff, a queue fed twice by one topic) are fixed;
their reproducers live in tests/unit/test_broker_regressions.py.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from test_broker_model import Clock, Comparing, outcome

from fastfanout import Broker, Closed, ExponentialBackoff, PublishEntry
from fastfanout.model import ModelBroker

QUEUE_SETTINGS: dict[str, list[dict[str, Any]]] = {
    "dlq": [{}, {"max_messages": 3, "overflow": "drop_oldest"}, {"max_priority": 3}],
    "fq": [
        {"fifo": True},
        {"fifo": True, "content_dedup": True, "dedup_window": 2.0, "visibility_timeout": 1.0},
        {"fifo": True, "max_receive_count": 2, "dead_letter_queue": "dlq", "dedup_window": 1.0},
        {"fifo": True, "redelivery_backoff": (0.5, 2.0), "visibility_timeout": 1.0,
         "max_messages": 3, "overflow": "drop_oldest"},
    ],
    "pq": [
        {"max_priority": 3, "redelivery_backoff": (1.0,), "visibility_timeout": 2.0},
        {"max_priority": 2, "max_messages": 3, "overflow": "drop_oldest"},
        {"max_priority": 5, "dead_letter_queue": "dlq", "max_receive_count": 2,
         "overflow": "dead_letter", "max_messages": 4},
    ],
    "sq": [
        {"content_dedup": True, "dedup_window": 1.0},
        {"redelivery_backoff": (0.5, 1.0), "visibility_timeout": 0.5, "dead_letter_queue": "dlq"},
        {"redelivery_backoff": ExponentialBackoff(0.5, 2.0, 2.0), "visibility_timeout": 1.0,
         "max_message_size": 12},
        {"delay": 0.5, "dedup_window": 3.0, "dead_letter_queue": "dlq", "max_messages": 3},
    ],
    "pat": [{"redelivery_backoff": (0.0, 1.0)}, {"content_dedup": True, "dedup_window": 2.0}],
}
QUEUES = list(QUEUE_SETTINGS)
SETTING_CHANGES: list[dict[str, Any]] = [
    {"visibility_timeout": 0.5}, {"visibility_timeout": 3.0},
    {"max_receive_count": 1, "dead_letter_queue": "dlq"}, {"max_receive_count": None},
    {"dead_letter_queue": None}, {"dead_letter_queue": "sq"}, {"dead_letter_queue": "pat"},
    {"delay": 0.5}, {"delay": 0.0},
    {"max_messages": 2, "overflow": "drop_oldest"}, {"max_messages": None},
    {"max_bytes": 10}, {"max_bytes": None, "max_messages": 1},
    {"max_message_size": 5}, {"max_message_size": 1_048_576},
    {"retention": 1.0}, {"retention": 2.5}, {"retention": 345_600.0},
    {"overflow": "reject"}, {"overflow": "dead_letter", "dead_letter_queue": "dlq"},
    {"redelivery_backoff": (1.0,)}, {"redelivery_backoff": ExponentialBackoff(0.5, 2.0, 2.0)},
    {"redelivery_backoff": None},
    # refused: a setting fixed for life, an unknown one, a bad value, a missing DLQ
    {"fifo": True}, {"max_priority": 1}, {"colour": 1}, {"visibility_timeout": -1.0},
    {"delay": 3.0, "retention": 2.0}, {"dead_letter_queue": "nope"},
]
"""set_queue_settings changes the machine draws: some refused (the same class both sides)."""
TOPIC_SETTINGS: dict[str, list[dict[str, Any]]] = {
    "t.a": [{}, {"content_dedup": True, "dedup_window": 1.0}],
    "t.b": [{}],
    "ft.x": [{"fifo": True}, {"fifo": True, "content_dedup": True, "dedup_window": 2.0}],
}
TOPICS = list(TOPIC_SETTINGS)
PATTERN = "t.*"
DIRECT_QUEUES = ["fq", "pq", "sq", "dlq"]
POLICIES: list[tuple[Any, str]] = [
    (None, "attributes"),
    ({"kind": ["a"]}, "attributes"),
    ({"n": [{"numeric": [">", 0]}]}, "attributes"),
    ({"kind": [{"anything-but": "a"}]}, "attributes"),
    ({"k": [{"exists": True}]}, "body"),
]

START = 1_000_000.0
STEPS = [0.0, 0.001, 0.5, 1.0, 2.0, 5.0]
BODIES = [b"a", b"b", b"c", b'{"k": 1}', b'{"j": 2}', b"a much longer body", b"d1"]
DEDUP_IDS = ["d1", "d2", "d3"]
GROUP_IDS = ["g1", "g2"]

bodies = st.sampled_from(BODIES)
attributes = st.sampled_from([None, {"kind": "a"}, {"kind": "b"}, {"n": 1}, {"n": -1.5},
                              {"kind": "a", "n": 2}])
group_ids = st.sampled_from([None, *GROUP_IDS, *GROUP_IDS])
dedup_ids = st.sampled_from([None, *DEDUP_IDS])
priorities = st.sampled_from([None, 0, 1, 2, 4, 255])
ttls = st.sampled_from([None, None, 0.5, 1.0, 3.0])
delays = st.sampled_from([None, None, None, 0.0, 0.5, 2.0])
deliver_offsets = st.sampled_from([None, None, None, -1.0, 0.7, 1.5])


@st.composite
def publish_entries(draw: st.DrawFn, now: float) -> PublishEntry:
    delay = draw(delays)
    offset = None if delay is not None else draw(deliver_offsets)
    deliver_at: Any = None
    if offset is not None:
        deliver_at = now + offset
        if draw(st.booleans()):
            zone = draw(st.sampled_from([UTC, timezone(timedelta(hours=-5))]))
            deliver_at = datetime.fromtimestamp(deliver_at, zone)
    return PublishEntry(draw(bodies), draw(attributes), delay, deliver_at, draw(group_ids),
                        draw(dedup_ids), draw(priorities), draw(ttls))


def message_fields(message: Any) -> tuple[Any, ...]:
    return (message.id, message.body, message.attributes, message.timestamp,
            message.receive_count, message.queue, message.dead_letter, message.group_id,
            message.dedup_id, message.priority)


class BrokerFeaturesMachine(Comparing, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.clock.now = START
        self.real = Broker(clock=self.clock)
        self.model = ModelBroker(clock=self.clock)
        self.receipt_map: dict[int, int] = {}
        self.pairs: list[tuple[int, int]] = []
        self.subscription_ids: list[int] = [0, 1]

    def teardown(self) -> None:
        self.real.close()
        self.model.close()
        for method, args in (("stats", ()), ("publish", ("t.a", b"x")),
                             ("set_filter_policy", (1, None))):
            real = outcome(lambda: getattr(self.real, method)(*args))  # noqa: B023
            model = outcome(lambda: getattr(self.model, method)(*args))  # noqa: B023
            assert type(real[1]) is Closed and type(model[1]) is Closed, (method, real, model)

    # -- setup and topology ------------------------------------------------------------

    @initialize(data=st.data())
    def setup(self, data: st.DataObject) -> None:
        for name in QUEUES:
            self.same("create_queue", name, **data.draw(st.sampled_from(QUEUE_SETTINGS[name])))
        for topic in TOPICS:
            self.same("create_topic", topic, **data.draw(st.sampled_from(TOPIC_SETTINGS[topic])))
        for topic, queue in (("t.a", "sq"), ("t.a", "pq"), ("t.b", "pq"), ("ft.x", "fq")):
            if data.draw(st.booleans()):
                self.subscribe(topic, queue, data.draw(st.integers(0, len(POLICIES) - 1)))
        if data.draw(st.booleans()):
            self.subscribe(PATTERN, "pat", 0)

    @rule(name=st.sampled_from(QUEUES), data=st.data())
    def create_queue(self, name: str, data: st.DataObject) -> None:
        self.same("create_queue", name, **data.draw(st.sampled_from(QUEUE_SETTINGS[name])))

    @rule(name=st.sampled_from(QUEUES), changes=st.sampled_from(SETTING_CHANGES))
    def set_queue_settings(self, name: str, changes: dict[str, Any]) -> None:
        result = self.both(lambda: self.real.set_queue_settings(name, **changes),
                           lambda: self.model.set_queue_settings(name, **changes),
                           f"set_queue_settings({name!r}, {changes})")
        if result is not None:
            real, model = result
            assert dataclasses.asdict(real) == dataclasses.asdict(model), (
                f"set_queue_settings({name!r}, {changes}): real {real} but model {model}")

    @rule(name=st.sampled_from(QUEUES), really=st.integers(0, 4))
    def delete_queue(self, name: str, really: int) -> None:
        if not really:  # rarely: a deletion loses the subscriptions and messages
            self.same("delete_queue", name)

    @rule(name=st.sampled_from(TOPICS), data=st.data(), delete=st.integers(0, 4))
    def create_or_delete_topic(self, name: str, data: st.DataObject, delete: int) -> None:
        if not delete:
            self.same("delete_topic", name)
        else:
            self.same("create_topic", name, **data.draw(st.sampled_from(TOPIC_SETTINGS[name])))

    @rule(topic=st.sampled_from([*TOPICS, PATTERN]), queue=st.sampled_from(DIRECT_QUEUES),
          policy=st.integers(0, len(POLICIES) - 1))
    def subscribe_direct(self, topic: str, queue: str, policy: int) -> None:
        # A pattern on a queue that also has a direct subscription feeds it twice: the
        # queue still gets one copy (if any of its policies matches).
        self.subscribe(topic, queue, policy)

    @rule(policy=st.integers(0, len(POLICIES) - 1))
    def subscribe_pattern(self, policy: int) -> None:
        self.subscribe(PATTERN, "pat", policy)

    def subscribe(self, topic: str, queue: str, policy: int) -> None:
        filter_policy, scope = POLICIES[policy]
        result = self.same("subscribe", topic, queue, filter_policy=filter_policy,
                           filter_scope=scope)
        if result is not None:
            self.subscription_ids.append(result[0])

    @rule(data=st.data(), policy=st.integers(0, len(POLICIES) - 1))
    def set_filter_policy(self, data: st.DataObject, policy: int) -> None:
        filter_policy, scope = POLICIES[policy]
        self.same("set_filter_policy", data.draw(st.sampled_from(self.subscription_ids)),
                  filter_policy, filter_scope=scope)

    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        self.same("unsubscribe", data.draw(st.sampled_from(self.subscription_ids)))

    # -- publish and send --------------------------------------------------------------

    @rule(topic=st.sampled_from(TOPICS), data=st.data())
    def publish(self, topic: str, data: st.DataObject) -> None:
        entry = data.draw(publish_entries(self.clock.now))
        self.same("publish", topic, entry.body, attributes=entry.attributes, delay=entry.delay,
                  deliver_at=entry.deliver_at, group_id=entry.group_id,
                  dedup_id=entry.dedup_id, priority=entry.priority, ttl=entry.ttl)

    @rule(topic=st.sampled_from(TOPICS), data=st.data())
    def publish_again(self, topic: str, data: st.DataObject) -> None:
        self.publish(topic, data)

    @rule(queue=st.sampled_from(QUEUES), data=st.data())
    def send(self, queue: str, data: st.DataObject) -> None:
        entry = data.draw(publish_entries(self.clock.now))
        self.same("send", queue, entry.body, attributes=entry.attributes, delay=entry.delay,
                  deliver_at=entry.deliver_at, group_id=entry.group_id,
                  dedup_id=entry.dedup_id, priority=entry.priority, ttl=entry.ttl)

    @rule(topic=st.sampled_from(TOPICS), data=st.data(), size=st.integers(0, 4))
    def publish_batch(self, topic: str, data: st.DataObject, size: int) -> None:
        entries = [data.draw(publish_entries(self.clock.now)) for _ in range(size)]
        self.same("publish_batch", topic, entries)

    @rule(queue=st.sampled_from(QUEUES), data=st.data(), size=st.integers(0, 4))
    def send_batch(self, queue: str, data: st.DataObject, size: int) -> None:
        entries = [data.draw(publish_entries(self.clock.now)) for _ in range(size)]
        self.same("send_batch", queue, entries)

    @rule(case=st.integers(0, 4), queue=st.sampled_from(QUEUES), topic=st.sampled_from(TOPICS))
    def refused_publish(self, case: int, queue: str, topic: str) -> None:
        bad: dict[str, Any] = [
            {"deliver_at": datetime(2030, 1, 1)},  # naive: refused
            {"priority": 256}, {"ttl": 0.0}, {"group_id": ""}, {"dedup_id": "x" * 129},
        ][case]
        if case == 0:
            self.same("create_queue", "bad", fifo=True, max_priority=1)
        if case % 2:
            self.same("publish", topic, b"x", **bad)
        else:
            self.same("send", queue, b"x", **bad)

    # -- receive and settle ------------------------------------------------------------

    @rule(queue=st.sampled_from(QUEUES), max_messages=st.sampled_from([1, 2, 5]),
          visibility_timeout=st.sampled_from([None, None, 0.5, 1.0]))
    def receive(self, queue: str, max_messages: int, visibility_timeout: Any) -> None:
        self.same_messages(queue, max_messages, visibility_timeout)

    @rule(data=st.data(), max_messages=st.sampled_from([1, 2, 5]),
          visibility_timeout=st.sampled_from([None, None, 0.5, 1.0]))
    def receive_from_a_busy_queue(self, data: st.DataObject, max_messages: int,
                                  visibility_timeout: Any) -> None:
        busy = [name for name, counters in self.model.stats().queues.items()
                if counters.visible]
        self.same_messages(data.draw(st.sampled_from(busy or QUEUES)), max_messages,
                           visibility_timeout)

    @rule(queue=st.sampled_from(["fq", "sq", "pq", "pat"]),
          settle=st.sampled_from([("ack", ()), ("nack", ()), ("nack", (0.5,)),
                                  ("extend", (0.0,)), ("extend", (2.0,)), ("term", ())]))
    def receive_and_settle(self, queue: str, settle: tuple[str, tuple[float, ...]]) -> None:
        # Leases on the backoff queues are short: settle one before the clock moves on.
        before = len(self.pairs)
        self.same_messages(queue, 1, None)
        if len(self.pairs) > before:
            method, args = settle
            if method == "nack":
                self.settle_pair(method, self.pairs[-1], delay=args[0] if args else None)
            elif method == "extend":
                self.extend_pair(self.pairs[-1], args[0])
            else:
                self.settle_pair(method, self.pairs[-1])

    def same_messages(self, queue: str, max_messages: int, visibility_timeout: Any) -> None:
        what = f"receive({queue!r}, {max_messages}, {visibility_timeout})"
        result = self.both(
            lambda: self.real.receive(queue, max_messages=max_messages,
                                      visibility_timeout=visibility_timeout),
            lambda: self.model.receive(queue, max_messages=max_messages,
                                       visibility_timeout=visibility_timeout), what)
        if result is None:
            return
        real, model = result
        assert [message_fields(m) for m in real] == [message_fields(m) for m in model], (
            f"{what}: real {[message_fields(m) for m in real]} "
            f"but model {[message_fields(m) for m in model]}")
        for real_message, model_message in zip(real, model, strict=True):
            assert real_message.receipt not in self.receipt_map, "a real receipt reused"
            self.receipt_map[real_message.receipt] = model_message.receipt
            self.pairs.append((real_message.receipt, model_message.receipt))

    def receipt(self, data: st.DataObject) -> tuple[int, int]:
        leased = self.model.leased_receipts()
        live = [pair for pair in self.pairs if pair[1] in leased]
        if live and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(live))
        return data.draw(st.sampled_from(self.pairs))

    def settle_pair(self, method: str, pair: tuple[int, int], *args: Any, **kwargs: Any
                    ) -> None:
        real_receipt, model_receipt = pair
        self.both(lambda: getattr(self.real, method)(real_receipt, *args, **kwargs),
                  lambda: getattr(self.model, method)(model_receipt, *args, **kwargs),
                  f"{method}({pair}, {args}, {kwargs})")

    @precondition(lambda self: self.pairs)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        self.settle_pair("ack", self.receipt(data))

    @precondition(lambda self: self.pairs)
    @rule(data=st.data(), delay=st.sampled_from([None, None, 0.0, 0.5]))
    def nack(self, data: st.DataObject, delay: float | None) -> None:
        self.settle_pair("nack", self.receipt(data), delay=delay)

    @precondition(lambda self: self.pairs)
    @rule(data=st.data(), seconds=st.sampled_from([0.0, 0.5, 3.0]))
    def extend(self, data: st.DataObject, seconds: float) -> None:
        self.extend_pair(self.receipt(data), seconds)

    def extend_pair(self, pair: tuple[int, int], seconds: float) -> None:
        self.settle_pair("extend", pair, seconds)

    @precondition(lambda self: self.pairs)
    @rule(data=st.data())
    def term(self, data: st.DataObject) -> None:
        self.settle_pair("term", self.receipt(data))

    # -- housekeeping ------------------------------------------------------------------

    @rule(to=st.sampled_from([None, None, "sq", "fq"]), max_messages=st.sampled_from([None, 1]))
    def redrive(self, to: str | None, max_messages: int | None) -> None:
        self.same("redrive", "dlq", to=to, max_messages=max_messages)

    @rule(queue=st.sampled_from(QUEUES))
    def purge(self, queue: str) -> None:
        self.same("purge", queue)

    @rule(seconds=st.sampled_from(STEPS))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(seconds=st.sampled_from(STEPS))
    def advance_clock_again(self, seconds: float) -> None:
        self.clock.now += seconds

    # -- invariants --------------------------------------------------------------------

    @invariant()
    def agree_on_stats(self) -> None:
        result = self.both(self.real.stats, self.model.stats, "stats()")
        assert result is not None
        real, model = result
        assert real.topics == model.topics, f"topics: real {real.topics} model {model.topics}"
        for name in real.queues.keys() | model.queues.keys():
            assert real.queues.get(name) == model.queues.get(name), (
                f"queue {name}: real {real.queues.get(name)} model {model.queues.get(name)}")

    @invariant()
    def internal_invariants(self) -> None:
        assert self.real.check()
        assert self.model.check()


# The full tier (FASTFANOUT_SOAK=1) tries five times as many sequences.
BrokerFeaturesMachine.TestCase.settings = settings(
    max_examples=1000 if os.environ.get("FASTFANOUT_SOAK") == "1" else 200,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBrokerFeatures = BrokerFeaturesMachine.TestCase
