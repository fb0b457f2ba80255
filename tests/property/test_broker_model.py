"""The native broker against the reference model, step by step (hypothesis state machine).

Both brokers read one fake clock and get the same calls. After every step they must
agree on return values (receipts differ: a bijection maps real ones to model ones), on
the class of any error, and on ``stats()``; the real core's ``check()`` and the model's
own invariants must hold.

Five divergences this machine found (a stale receipt listed twice, dead letters counted
as rejected publishes, a publish over-filling a dead-letter queue, argument errors before
``Closed``, redrive missing a re-created source queue) are fixed in the broker and kept
as plain regression tests in tests/unit/test_broker_regressions.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from fastfanout import Broker, Closed, PublishEntry, QueueFull, StaleReceipt
from fastfanout.model import ModelBroker

START = 1_000_000.0
STEPS = [0.0, 0.001, 0.5, 1.0, 5.0, 30.0]

# A few fixed queue names, each with the settings it may be (re-)created with. The DLQ
# graph follows creation order, so it never has a cycle.
QUEUE_SETTINGS: dict[str, list[dict[str, Any]]] = {
    "dlq2": [{}, {"max_messages": 2},
             {"max_messages": 2, "overflow": "drop_oldest", "max_receive_count": 1}],
    "dlq": [
        {"max_messages": 3, "overflow": "drop_oldest"},
        {"max_messages": 3, "overflow": "dead_letter", "dead_letter_queue": "dlq2"},
        {"max_messages": 2},
        {},
    ],
    "a": [
        {"max_receive_count": 2, "dead_letter_queue": "dlq"},
        {"visibility_timeout": 1.0, "max_receive_count": 3, "dead_letter_queue": "dlq2"},
    ],
    "b": [
        {"max_messages": 3},
        {"max_messages": 3, "overflow": "drop_oldest"},
        {"max_bytes": 24, "overflow": "dead_letter", "dead_letter_queue": "dlq"},
        {"max_messages": 2, "overflow": "hold"},
    ],
    "c": [
        {"delay": 0.5, "retention": 5.0},
        {"max_receive_count": 1},
        {"retention": 1.0, "visibility_timeout": 0.5},
        {"max_bytes": 30, "overflow": "drop_oldest", "visibility_timeout": 0.0},
    ],
    "d": [
        {},
        {"max_messages": 2, "overflow": "dead_letter", "dead_letter_queue": "dlq",
         "max_receive_count": 2, "max_message_size": 40},
        {"delay": 2.0, "max_messages": 3, "overflow": "dead_letter", "dead_letter_queue": "dlq2",
         "retention": 30.0},
    ],
}
QUEUES = list(QUEUE_SETTINGS)
DEAD_LETTER_QUEUES = {"dlq", "dlq2"}
SUBSCRIBABLE = QUEUES
TOPICS = ["t1", "t2"]

queue_names = st.sampled_from(QUEUES)
topic_names = st.sampled_from(TOPICS)
attribute_values = st.one_of(
    st.text(max_size=3),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.binary(max_size=3),
    st.lists(st.text(max_size=2), max_size=2),
)
attributes = st.none() | st.dictionaries(
    st.sampled_from(["k", "kind", "n"]), attribute_values, max_size=2)
bodies = st.binary(max_size=12) | st.binary(max_size=12).map(bytearray)
delays = st.sampled_from([None, None, 0.0, 0.001, 0.5, 2.0])
deliver_offsets = st.sampled_from([None, None, None, -1.0, 0.0, 0.5, 3.0])
BAD_SENDS: list[dict[str, Any]] = [
    {"body": "text"},
    {"attributes": {"flag": True}},
    {"attributes": {f"k{i}": i for i in range(11)}},
    {"attributes": {"": "x"}},
    {"attributes": {"n": math.nan}},
    {"attributes": {"n": -math.inf}},
    {"delay": -1.0},
    {"delay": math.nan},
    {"delay": 31_536_001.0},
    {"delay": 1.0, "deliver_at_offset": 1.0},
]
BAD_RECEIPTS: list[Any] = [-1, 2**64, "receipt", 1.5, None]


@st.composite
def entries(draw: st.DrawFn) -> list[Any]:
    items: list[Any] = []
    for _ in range(draw(st.integers(0, 4))):
        body = draw(bodies)
        if draw(st.booleans()):
            items.append(body)
        else:
            items.append(PublishEntry(body, draw(attributes), draw(delays)))
    return items


class Clock:
    """The fake clock both brokers read."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "ok", call()
    except Exception as error:  # every error is compared, including TypeError
        return "error", error


def message_fields(message: Any) -> tuple[Any, ...]:
    return (message.id, message.body, message.attributes, message.timestamp,
            message.receive_count, message.queue, message.dead_letter)


class Comparing:
    """Run each call on the real broker and on the model, and compare the outcomes.

    The machines that use it set ``real``, ``model`` and ``receipt_map`` (real receipt ->
    model receipt).
    """

    real: Any
    model: Any
    receipt_map: dict[int, int]

    def both(self, real_call: Callable[[], Any], model_call: Callable[[], Any],
             what: str) -> tuple[Any, Any] | None:
        """Run one operation on both; None when both raised (the same class)."""
        real = outcome(real_call)
        model = outcome(model_call)
        assert real[0] == model[0], f"{what}: real {real!r} but model {model!r}"
        if real[0] == "error":
            assert type(real[1]) is type(model[1]), f"{what}: real {real!r}, model {model!r}"
            if isinstance(real[1], StaleReceipt):
                mapped = [self.receipt_map.get(r, r) for r in real[1].receipts]
                assert mapped == model[1].receipts, what
            if isinstance(real[1], QueueFull):
                assert real[1].hold == model[1].hold, what
            return None
        return real[1], model[1]

    def same(self, method: str, *args: Any, **kwargs: Any) -> tuple[Any, Any] | None:
        what = f"{method}{args}{kwargs}"
        result = self.both(lambda: getattr(self.real, method)(*args, **kwargs),
                           lambda: getattr(self.model, method)(*args, **kwargs), what)
        if result is not None:
            real, model = result
            if method in ("publish_batch", "send_batch"):
                real = list(real)
            assert real == model, f"{what}: real {real!r} but model {model!r}"
        return result


class BrokerModelMachine(Comparing, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.real = Broker(clock=self.clock)
        self.model = ModelBroker(clock=self.clock)
        self.receipt_map: dict[int, int] = {}  # real receipt -> model receipt
        self.model_receipts: set[int] = set()
        self.published: dict[int, bytes] = {}  # message id -> body
        self.pairs: list[tuple[int, int]] = []  # (real, model) receipts, stale ones too
        self.subscription_ids: list[int] = [0, 1, 2, 3]

    def teardown(self) -> None:
        self.real.close()
        self.model.close()
        # Closed both: every call now raises Closed on both sides.
        for method, args in (("stats", ()), ("list_queues", ()), ("send", ("a", b"x")),
                             ("publish", ("t1", b"x")), ("receive", ("a",)),
                             ("ack", (2**64 - 1,)), ("purge", ("a",)), ("close", ())):
            if method == "close":
                self.same(method)  # closing again is a no-op
                continue
            real = outcome(lambda: getattr(self.real, method)(*args))  # noqa: B023
            model = outcome(lambda: getattr(self.model, method)(*args))  # noqa: B023
            assert type(real[1]) is Closed and type(model[1]) is Closed, (method, real, model)

    def record_publish(self, results: list[Any], entries: list[Any]) -> None:
        for result, entry in zip(results, entries, strict=True):
            body = entry.body if isinstance(entry, PublishEntry) else entry
            self.published[result.message_id] = bytes(body)

    # -- setup -------------------------------------------------------------------------

    @initialize(data=st.data(),
                routes=st.sets(st.tuples(topic_names, st.sampled_from(SUBSCRIBABLE)),
                               min_size=1, max_size=5))
    def setup(self, data: st.DataObject, routes: set[tuple[str, str]]) -> None:
        for name in QUEUES:
            self.same("create_queue", name, **data.draw(st.sampled_from(QUEUE_SETTINGS[name])))
        for topic in TOPICS:
            self.same("create_topic", topic)
        for topic, queue in sorted(routes):
            self.subscribe(topic, queue)

    # -- topology ----------------------------------------------------------------------

    @rule(name=queue_names, data=st.data())
    def create_queue(self, name: str, data: st.DataObject) -> None:
        self.same("create_queue", name, **data.draw(st.sampled_from(QUEUE_SETTINGS[name])))

    @rule(name=queue_names)
    def delete_queue(self, name: str) -> None:
        self.same("delete_queue", name)

    @rule(name=topic_names, delete=st.booleans())
    def create_or_delete_topic(self, name: str, delete: bool) -> None:
        self.same("delete_topic" if delete else "create_topic", name)

    @rule(topic=topic_names, queue=st.sampled_from(SUBSCRIBABLE))
    def subscribe(self, topic: str, queue: str) -> None:
        result = self.same("subscribe", topic, queue)
        if result is not None:
            self.subscription_ids.append(result[0])

    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        self.same("unsubscribe", data.draw(st.sampled_from(self.subscription_ids)))

    # -- publish and send --------------------------------------------------------------

    def single(self, method: str, target: str, body: bytes, attrs: Any, delay: Any,
               offset: Any) -> None:
        deliver_at = None if offset is None else self.clock.now + offset
        if delay is not None and deliver_at is not None:
            deliver_at = None
        result = self.same(method, target, body, attributes=attrs, delay=delay,
                           deliver_at=deliver_at)
        if result is not None:
            self.record_publish([result[0]], [body])

    @rule(topic=topic_names, body=bodies, attrs=attributes, delay=delays,
          offset=deliver_offsets)
    def publish(self, topic: str, body: bytes, attrs: Any, delay: Any, offset: Any) -> None:
        self.single("publish", topic, body, attrs, delay, offset)

    @rule(topic=topic_names, body=bodies, attrs=attributes, delay=delays,
          offset=deliver_offsets)
    def publish_again(self, topic: str, body: bytes, attrs: Any, delay: Any, offset: Any
                      ) -> None:
        self.single("publish", topic, body, attrs, delay, offset)

    @rule(queue=queue_names, body=bodies, attrs=attributes, delay=delays,
          offset=deliver_offsets)
    def send(self, queue: str, body: bytes, attrs: Any, delay: Any, offset: Any) -> None:
        self.single("send", queue, body, attrs, delay, offset)

    @rule(topic=topic_names, entries=entries())
    def publish_batch(self, topic: str, entries: list[Any]) -> None:
        result = self.same("publish_batch", topic, entries)
        if result is not None:
            self.record_publish(result[1], entries)

    @rule(queue=queue_names, entries=entries())
    def send_batch(self, queue: str, entries: list[Any]) -> None:
        result = self.same("send_batch", queue, entries)
        if result is not None:
            self.record_publish(result[1], entries)

    # -- receive and settle ------------------------------------------------------------

    @rule(queue=queue_names, max_messages=st.sampled_from([1, 2, 3, 10]),
          visibility_timeout=st.sampled_from([None, None, 0.0, 0.5, 1.0, 30.0]))
    def receive(self, queue: str, max_messages: int, visibility_timeout: Any) -> None:
        self.pairs.extend(self.same_messages(queue, max_messages, visibility_timeout))

    @rule(data=st.data(), max_messages=st.sampled_from([1, 2, 3, 10]))
    def receive_from_a_busy_queue(self, data: st.DataObject, max_messages: int) -> None:
        busy = [name for name, counters in self.model.stats().queues.items()
                if counters.visible]
        queue = data.draw(st.sampled_from(busy or QUEUES))
        self.pairs.extend(self.same_messages(queue, max_messages, None))

    def receipt(self, data: st.DataObject) -> tuple[int, int]:
        # Mostly receipts the model holds as live (their lease may still end at the
        # next call), sometimes any receipt ever issued (stale ones).
        leased = self.model.leased_receipts()
        live = [pair for pair in self.pairs if pair[1] in leased]
        if live and data.draw(st.integers(0, 3)):
            return data.draw(st.sampled_from(live))
        return data.draw(st.sampled_from(self.pairs))

    def same_messages(self, queue: str, max_messages: int, visibility_timeout: Any
                      ) -> list[tuple[int, int]]:
        what = f"receive({queue!r}, {max_messages}, {visibility_timeout})"
        result = self.both(
            lambda: self.real.receive(queue, max_messages=max_messages,
                                      visibility_timeout=visibility_timeout),
            lambda: self.model.receive(queue, max_messages=max_messages,
                                       visibility_timeout=visibility_timeout), what)
        if result is None:
            return []
        real, model = result
        assert [message_fields(m) for m in real] == [message_fields(m) for m in model], (
            f"{what}: real {[message_fields(m) for m in real]} "
            f"but model {[message_fields(m) for m in model]}")
        pairs = []
        for real_message, model_message in zip(real, model, strict=True):
            assert real_message.id in self.published, "delivered what was never published"
            assert real_message.body == self.published[real_message.id]
            assert real_message.receipt not in self.receipt_map, "a real receipt reused"
            assert model_message.receipt not in self.model_receipts, "a model receipt reused"
            self.receipt_map[real_message.receipt] = model_message.receipt
            self.model_receipts.add(model_message.receipt)
            pairs.append((real_message.receipt, model_message.receipt))
        return pairs

    @precondition(lambda self: self.pairs)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        self.settle("ack", self.receipt(data))

    @precondition(lambda self: self.pairs)
    @rule(data=st.data(), size=st.integers(0, 4))
    def ack_batch(self, data: st.DataObject, size: int) -> None:
        pairs = [self.receipt(data) for _ in range(size)]
        self.both(lambda: self.real.ack_batch([real for real, _ in pairs]),
                  lambda: self.model.ack_batch([model for _, model in pairs]),
                  f"ack_batch({pairs})")

    @precondition(lambda self: self.pairs)
    @rule(data=st.data(), size=st.integers(0, 4),
          how=st.sampled_from(["nack_batch", "nack_batch_backoff", "extend_batch",
                               "extend_batch_to_zero", "term_batch"]))
    def settle_batch(self, data: st.DataObject, size: int, how: str) -> None:
        """A batch form (repeats, stale receipts and all): the model's single forms
        in order, all or none."""
        pairs = [self.receipt(data) for _ in range(size)]
        method, options = {
            "nack_batch": ("nack_batch", {"delay": 0.5}),
            "nack_batch_backoff": ("nack_batch", {}),
            "extend_batch": ("extend_batch", {"seconds": 60.0}),
            "extend_batch_to_zero": ("extend_batch", {"seconds": 0.0}),
            "term_batch": ("term_batch", {}),
        }[how]
        self.both(lambda: getattr(self.real, method)([real for real, _ in pairs], **options),
                  lambda: getattr(self.model, method)([model for _, model in pairs],
                                                      **options),
                  f"{method}({pairs}, {options})")

    @precondition(lambda self: self.pairs)
    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.0, 0.001, 0.5, 2.0]))
    def nack(self, data: st.DataObject, delay: float) -> None:
        self.settle("nack", self.receipt(data), delay=delay)

    @precondition(lambda self: self.pairs)
    @rule(data=st.data(), seconds=st.sampled_from([0.0, 0.5, 1.0, 60.0]))
    def extend(self, data: st.DataObject, seconds: float) -> None:
        self.settle("extend", self.receipt(data), seconds)

    @precondition(lambda self: self.pairs)
    @rule(data=st.data())
    def term(self, data: st.DataObject) -> None:
        self.settle("term", self.receipt(data))

    def settle(self, method: str, pair: tuple[int, int], *args: Any, **kwargs: Any) -> None:
        real_receipt, model_receipt = pair
        self.both(lambda: getattr(self.real, method)(real_receipt, *args, **kwargs),
                  lambda: getattr(self.model, method)(model_receipt, *args, **kwargs),
                  f"{method}({pair}, {args}, {kwargs})")

    # -- housekeeping ------------------------------------------------------------------

    @rule(dlq=st.sampled_from(["dlq", "dlq2", "a"]),
          to=st.sampled_from([None, None, "a", "b", "dlq"]),
          max_messages=st.sampled_from([None, 1, 2]))
    def redrive(self, dlq: str, to: str | None, max_messages: int | None) -> None:
        self.same("redrive", dlq, to=to, max_messages=max_messages)

    @rule(queue=queue_names)
    def purge(self, queue: str) -> None:
        self.same("purge", queue)

    @rule(seconds=st.sampled_from(STEPS))
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule(seconds=st.sampled_from(STEPS))
    def advance_clock_again(self, seconds: float) -> None:
        self.clock.now += seconds

    # -- refused calls (one rule, so that they do not crowd out the useful ones) -------

    @rule(case=st.integers(0, 5), data=st.data())
    def refused_call(self, case: int, data: st.DataObject) -> None:
        if case == 0:
            name = data.draw(st.sampled_from(["bad name", "", "x" * 257, "missing"]))
            if name != "missing":
                self.same("create_topic", name)
            self.same("send", name, b"x")
            self.same("publish", name, b"x")
            self.same("receive", name)
            self.same("subscribe", "t1", name)
            self.same("redrive", name)
        elif case == 1:
            bad = dict(data.draw(st.sampled_from(BAD_SENDS)))
            body = bad.pop("body", b"x")
            if "deliver_at_offset" in bad:
                bad["deliver_at"] = self.clock.now + bad.pop("deliver_at_offset")
            self.same("publish", data.draw(topic_names), body, **bad)
            self.same("send", data.draw(queue_names), body, **bad)
        elif case == 2:
            receipt = data.draw(st.sampled_from(BAD_RECEIPTS))
            self.same(data.draw(st.sampled_from(["ack", "nack", "term"])), receipt)
            self.same("ack_batch", [receipt])
            self.same(data.draw(st.sampled_from(["nack_batch", "term_batch"])), [receipt])
        elif case == 3:
            seconds = data.draw(st.sampled_from([-1.0, math.inf, 43_201.0]))
            self.same("extend", 2**64 - 1, seconds)
            self.same("nack", 2**64 - 1, delay=-seconds)
            self.same("extend_batch", [2**64 - 1], seconds)
            self.same("nack_batch", [2**64 - 1], delay=-seconds)
        elif case == 4:
            queue = data.draw(queue_names)
            self.same("receive", queue, max_messages=data.draw(st.sampled_from([0, 10_001])))
            self.same("receive", queue, wait=data.draw(st.sampled_from([-1.0, 21.0])))
            self.same("receive", queue, visibility_timeout=43_201.0)
        else:
            self.same("list_topics")
            self.same("list_queues")

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
        for name, counters in real.queues.items():
            assert counters.messages == counters.visible + counters.leased + counters.delayed
            assert counters.enqueued == (
                counters.messages + counters.acked + counters.purged + counters.dead_lettered
                + counters.redriven + sum(counters.dropped.values())), name

    @invariant()
    def internal_invariants(self) -> None:
        assert self.real.check()
        assert self.model.check()


BrokerModelMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestBrokerModel = BrokerModelMachine.TestCase
