"""The reference model on the issue-3 features, rule by rule of docs/semantics.md."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from fastfanout.errors import AlreadyExists, InvalidArgument, InvalidFilterPolicy
from fastfanout.model import ModelBroker, ModelMessage
from fastfanout.records import ExponentialBackoff, PublishEntry, PublishResult
from fastfanout.stats import QueueStats, TopicStats

START = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def model(clock: Clock) -> Iterator[ModelBroker]:
    broker = ModelBroker(clock=clock)
    yield broker
    if not broker.closed:
        assert broker.check()
        for name, queue in broker.stats().queues.items():
            assert queue.enqueued == (queue.messages + queue.acked + queue.purged
                                      + queue.dead_lettered + queue.redriven
                                      + sum(queue.dropped.values())), name


def bodies(messages: list[ModelMessage]) -> list[bytes]:
    return [message.body for message in messages]


def queue_stats(model: ModelBroker, name: str) -> QueueStats:
    return model.stats().queues[name]


def topic_stats(model: ModelBroker, name: str) -> TopicStats:
    return model.stats().topics[name]


# -- FIFO ---------------------------------------------------------------------------------


def fifo_send(model: ModelBroker, queue: str, body: bytes, group: str) -> PublishResult:
    return model.send(queue, body, group_id=group, dedup_id=body.decode())


def test_fifo_one_leased_message_per_group_other_groups_proceed(model: ModelBroker) -> None:
    model.create_queue("f", fifo=True)
    for body, group in ((b"a1", "a"), (b"a2", "a"), (b"b1", "b"), (b"b2", "b")):
        fifo_send(model, "f", body, group)
    assert bodies(model.receive("f", max_messages=10)) == [b"a1", b"b1"]
    assert model.receive("f", max_messages=10) == []
    assert queue_stats(model, "f").groups == 2


def test_fifo_nack_and_expired_lease_return_the_same_message_first(
        model: ModelBroker, clock: Clock) -> None:
    model.create_queue("f", fifo=True, visibility_timeout=1.0)
    fifo_send(model, "f", b"1", "g")
    fifo_send(model, "f", b"2", "g")
    first = model.receive("f")[0]
    model.nack(first.receipt)
    again = model.receive("f")[0]
    assert (again.body, again.receive_count) == (b"1", 2)
    clock.advance(1.0)
    assert bodies(model.receive("f")) == [b"1"]


def test_fifo_ack_releases_the_group_and_frees_it_when_empty(model: ModelBroker) -> None:
    model.create_queue("f", fifo=True)
    fifo_send(model, "f", b"1", "g")
    fifo_send(model, "f", b"2", "g")
    model.ack(model.receive("f")[0].receipt)
    second = model.receive("f")[0]
    assert second.body == b"2"
    model.ack(second.receipt)
    assert queue_stats(model, "f").groups == 0


def test_fifo_delayed_head_holds_its_group(model: ModelBroker, clock: Clock) -> None:
    model.create_queue("f", fifo=True)
    model.send("f", b"1", group_id="g", dedup_id="1", delay=2.0)
    fifo_send(model, "f", b"2", "g")
    fifo_send(model, "f", b"x", "h")
    assert bodies(model.receive("f", max_messages=10)) == [b"x"]
    clock.advance(2.0)
    assert bodies(model.receive("f", max_messages=10)) == [b"1"]


def test_fifo_needs_group_and_dedup_ids_and_consumes_no_id(model: ModelBroker) -> None:
    model.create_queue("f", fifo=True)
    model.create_queue("c", fifo=True, content_dedup=True)
    with pytest.raises(InvalidArgument):
        model.send("f", b"x", dedup_id="d")
    with pytest.raises(InvalidArgument):
        model.send("f", b"x", group_id="g")
    with pytest.raises(InvalidArgument):
        model.send_batch("f", [PublishEntry(b"ok", group_id="g", dedup_id="d"),
                               PublishEntry(b"bad", dedup_id="e")])
    assert model.send("c", b"x", group_id="g") == PublishResult(1, 1)
    assert queue_stats(model, "f").messages == 0


def test_fifo_topics_feed_fifo_queues_only(model: ModelBroker) -> None:
    model.create_topic("ft", fifo=True)
    model.create_topic("st.a")
    model.create_queue("f", fifo=True)
    model.create_queue("s")
    with pytest.raises(InvalidArgument):
        model.subscribe("ft", "s")
    with pytest.raises(InvalidArgument):
        model.subscribe("st.a", "f")
    model.subscribe("st.*", "f")  # a pattern skips topics of the other kind
    assert model.publish("st.a", b"x") == PublishResult(1, 0)
    assert topic_stats(model, "st.a").subscriptions == 0
    with pytest.raises(InvalidArgument):
        model.publish("ft", b"x", dedup_id="d")


def test_priorities_do_not_apply_to_fifo_queues(model: ModelBroker) -> None:
    with pytest.raises(InvalidArgument):
        model.create_queue("f", fifo=True, max_priority=1)


# -- deduplication ------------------------------------------------------------------------


def test_send_duplicate_returns_the_original_id_for_the_window(
        model: ModelBroker, clock: Clock) -> None:
    model.create_queue("q", dedup_window=2.0)
    assert model.send("q", b"a", dedup_id="k") == PublishResult(1, 1)
    model.ack(model.receive("q")[0].receipt)  # the key outlives the message
    assert model.send("q", b"b", dedup_id="k") == PublishResult(1, 0, True)
    assert queue_stats(model, "q").duplicates == 1
    assert queue_stats(model, "q").dedup_entries == 1
    clock.advance(2.0)
    assert queue_stats(model, "q").dedup_entries == 0
    assert model.send("q", b"c", dedup_id="k") == PublishResult(2, 1)


def test_content_dedup_keys_by_body_and_an_explicit_id_overrides(model: ModelBroker) -> None:
    model.create_queue("q", content_dedup=True)
    assert model.send("q", b"a") == PublishResult(1, 1)
    assert model.send("q", b"a") == PublishResult(1, 0, True)
    assert model.send("q", b"a", dedup_id="other") == PublishResult(2, 1)
    assert model.send("q", b"other") == PublishResult(3, 1)  # an id is not a body


def test_duplicates_inside_one_batch_the_first_counts(model: ModelBroker) -> None:
    model.create_queue("q")
    results = model.send_batch("q", [PublishEntry(b"a", dedup_id="k"), PublishEntry(b"b"),
                                     PublishEntry(b"c", dedup_id="k")])
    assert results == [PublishResult(1, 1), PublishResult(2, 1), PublishResult(1, 0, True)]


def test_a_failed_batch_remembers_nothing(model: ModelBroker) -> None:
    model.create_queue("q", max_message_size=4)
    with pytest.raises(Exception, match="max_message_size"):
        model.send_batch("q", [PublishEntry(b"a", dedup_id="k"), b"too large"])
    assert queue_stats(model, "q").oversized == 1
    assert model.send("q", b"a", dedup_id="k") == PublishResult(1, 1)


def test_topic_level_duplicate_creates_no_copy(model: ModelBroker) -> None:
    model.create_topic("t", content_dedup=True)
    model.create_queue("q")
    model.subscribe("t", "q")
    assert model.publish("t", b"a") == PublishResult(1, 1)
    assert model.publish("t", b"a") == PublishResult(1, 0, True)
    counters = topic_stats(model, "t")
    assert (counters.published, counters.duplicates, counters.dedup_entries) == (1, 1, 1)
    assert queue_stats(model, "q").messages == 1


def test_queue_level_duplicate_of_a_publish_is_not_enqueued(model: ModelBroker) -> None:
    model.create_topic("t")
    model.create_queue("q")
    model.create_queue("r")
    model.subscribe("t", "q")
    model.subscribe("t", "r")
    model.send("q", b"a", dedup_id="k")
    assert model.publish("t", b"b", dedup_id="k") == PublishResult(2, 1)
    assert queue_stats(model, "q").duplicates == 1
    model.publish("t", b"c", dedup_id="j")
    model.send_batch("q", [PublishEntry(b"d", dedup_id="i")])
    model.send_batch("r", [PublishEntry(b"d", dedup_id="i")])
    assert model.publish("t", b"e", dedup_id="i") == PublishResult(6, 0)
    assert topic_stats(model, "t").unrouted == 1  # every queue held it as a duplicate


def test_a_full_window_forgets_its_oldest_key_early(clock: Clock) -> None:
    model = ModelBroker(clock=clock, dedup_capacity=2)
    model.create_queue("q")
    for key in "abc":
        model.send("q", b"x", dedup_id=key)
    counters = queue_stats(model, "q")
    assert (counters.dedup_entries, counters.dedup_evicted) == (2, 1)
    assert model.send("q", b"x", dedup_id="a") == PublishResult(4, 1)


# -- priorities ---------------------------------------------------------------------------


def test_higher_priority_first_fifo_within_and_clamped(model: ModelBroker) -> None:
    model.create_queue("p", max_priority=2)
    for body, priority in ((b"low", 0), (b"top1", 9), (b"mid", 1), (b"top2", 2), (b"none", None)):
        model.send("p", body, priority=priority)
    received = model.receive("p", max_messages=10)
    assert bodies(received) == [b"top1", b"top2", b"mid", b"low", b"none"]
    assert received[0].priority == 9  # the message keeps what was given


def test_drop_oldest_drops_the_lowest_priority_first(model: ModelBroker) -> None:
    model.create_queue("p", max_priority=2, max_messages=2, overflow="drop_oldest")
    model.send("p", b"high", priority=2)
    model.send("p", b"low", priority=0)
    model.send("p", b"new", priority=2)
    assert bodies(model.receive("p", max_messages=10)) == [b"high", b"new"]
    assert queue_stats(model, "p").dropped["overflow"] == 1


def test_priority_must_be_an_int_from_0_to_255(model: ModelBroker) -> None:
    model.create_queue("p", max_priority=2)
    for bad in (256, -1, True, 1.0):
        with pytest.raises(InvalidArgument):
            model.send("p", b"x", priority=bad)  # type: ignore[arg-type]


# -- delays and schedules -----------------------------------------------------------------


def test_deliver_at_float_and_aware_datetime(model: ModelBroker, clock: Clock) -> None:
    model.create_queue("q")
    zone = timezone(timedelta(hours=3))
    model.send("q", b"dt", deliver_at=datetime.fromtimestamp(START + 2.0, zone))
    model.send("q", b"float", deliver_at=START + 1.0)
    model.send("q", b"past", deliver_at=START - 5.0)
    assert bodies(model.receive("q", max_messages=10)) == [b"past"]
    clock.advance(1.0)
    assert bodies(model.receive("q", max_messages=10)) == [b"float"]
    clock.advance(1.0)
    assert bodies(model.receive("q", max_messages=10)) == [b"dt"]


def test_naive_datetime_and_far_schedules_are_refused(model: ModelBroker) -> None:
    model.create_queue("q")
    with pytest.raises(InvalidArgument):
        model.send("q", b"x", deliver_at=datetime(2030, 1, 1))  # naive
    with pytest.raises(InvalidArgument):
        model.send("q", b"x", deliver_at=datetime.fromtimestamp(START + 400 * 86400, UTC))
    with pytest.raises(InvalidArgument):
        model.send("q", b"x", delay=1.0, deliver_at=START)


# -- redelivery backoff -------------------------------------------------------------------


def test_backoff_after_nack_without_delay_last_step_repeats(
        model: ModelBroker, clock: Clock) -> None:
    model.create_queue("q", redelivery_backoff=(1.0, 2.0))
    model.send("q", b"x")
    waits = []
    for _ in range(3):
        model.nack(model.receive("q")[0].receipt)
        waited = 0.0
        while not queue_stats(model, "q").visible:
            clock.advance(0.5)
            waited += 0.5
        waits.append(waited)
    assert waits == [1.0, 2.0, 2.0]


def test_explicit_nack_delay_overrides_the_backoff(model: ModelBroker) -> None:
    model.create_queue("q", redelivery_backoff=(5.0,))
    model.send("q", b"x")
    model.nack(model.receive("q")[0].receipt, delay=0.0)
    assert queue_stats(model, "q").visible == 1


def test_backoff_after_an_expired_lease_counts_from_the_lease_end(
        model: ModelBroker, clock: Clock) -> None:
    model.create_queue("q", visibility_timeout=1.0,
                       redelivery_backoff=ExponentialBackoff(1.0, 2.0, 4.0))
    model.send("q", b"x")
    model.receive("q")
    clock.advance(1.9)  # the lease ended at +1.0, the wait ends at +2.0
    assert queue_stats(model, "q").delayed == 1
    clock.advance(0.1)
    assert bodies(model.receive("q")) == [b"x"]
    clock.advance(10.0)  # ended at +3.0, waited 2.0 -> visible since +5.0
    assert queue_stats(model, "q").visible == 1


def test_extend_zero_returns_at_once_without_the_backoff(model: ModelBroker) -> None:
    # docs/semantics.md: extend(0) acts as nack(delay=0), as SQS's visibility 0.
    model.create_queue("q", redelivery_backoff=(1.0,))
    model.send("q", b"x")
    model.extend(model.receive("q")[0].receipt, 0.0)
    assert queue_stats(model, "q").visible == 1 and queue_stats(model, "q").delayed == 0


def test_bad_backoffs_are_refused(model: ModelBroker) -> None:
    for bad in ((), (-1.0,), ExponentialBackoff(0.0, 2.0, 1.0), "1,2", (1.0,) * 65):
        with pytest.raises(InvalidArgument):
            model.create_queue("q", redelivery_backoff=bad)  # type: ignore[arg-type]


# -- TTL ----------------------------------------------------------------------------------


def test_expired_message_at_the_head_is_dropped_or_dead_lettered(
        model: ModelBroker, clock: Clock) -> None:
    model.create_queue("dlq")
    model.create_queue("plain")
    model.create_queue("guarded", dead_letter_queue="dlq")
    for queue in ("plain", "guarded"):
        model.send(queue, b"old", ttl=1.0)
        model.send(queue, b"fresh")
    clock.advance(1.0)
    assert queue_stats(model, "plain").visible == 2  # not searched for before the head
    assert bodies(model.receive("plain")) == [b"fresh"]
    assert queue_stats(model, "plain").dropped["expired"] == 1
    assert bodies(model.receive("guarded")) == [b"fresh"]
    dead = model.receive("dlq")[0]
    assert dead.dead_letter is not None and dead.dead_letter.reason == "expired"


def test_never_expired_while_leased_nor_as_a_dead_letter(
        model: ModelBroker, clock: Clock) -> None:
    model.create_queue("dlq")
    model.create_queue("q", dead_letter_queue="dlq", visibility_timeout=5.0)
    model.send("q", b"x", ttl=1.0)
    receipt = model.receive("q")[0].receipt
    clock.advance(2.0)
    model.ack(receipt)  # still leased: not expired under its consumer
    model.send("q", b"y", ttl=1.0)
    model.term(model.receive("q")[0].receipt)
    clock.advance(2.0)
    assert bodies(model.receive("dlq")) == [b"y"]


def test_ttl_must_be_positive(model: ModelBroker) -> None:
    model.create_queue("q")
    with pytest.raises(InvalidArgument):
        model.send("q", b"x", ttl=0.0)


# -- filter policies and topic patterns ---------------------------------------------------


def test_filter_policy_keeps_copies_out_and_counts_them(model: ModelBroker) -> None:
    model.create_topic("t")
    model.create_queue("a")
    model.create_queue("b")
    model.subscribe("t", "a", filter_policy={"kind": ["a"]})
    model.subscribe("t", "b", filter_policy='{"n": [{"numeric": [">", 0]}]}')
    assert model.publish("t", b"x", attributes={"kind": "a", "n": 1}).deliveries == 2
    assert model.publish("t", b"x", attributes={"kind": "b"}).deliveries == 0
    counters = topic_stats(model, "t")
    assert (counters.filtered_out, counters.unrouted) == (2, 1)


def test_body_scope_needs_a_json_object(model: ModelBroker) -> None:
    model.create_topic("t")
    model.create_queue("a")
    model.subscribe("t", "a", filter_policy={"k": [{"exists": True}]}, filter_scope="body")
    assert model.publish("t", b'{"k": 1}').deliveries == 1
    assert model.publish("t", b"not json").deliveries == 0


def test_set_filter_policy_applies_to_the_next_publish(model: ModelBroker) -> None:
    model.create_topic("t")
    model.create_queue("a")
    sid = model.subscribe("t", "a", filter_policy={"kind": ["a"]})
    assert model.publish("t", b"x").deliveries == 0
    model.set_filter_policy(sid, None)
    assert model.publish("t", b"x").deliveries == 1
    with pytest.raises(InvalidFilterPolicy):
        model.set_filter_policy(sid, {"kind": []})


def test_same_pair_same_policy_same_id_other_policy_refused(model: ModelBroker) -> None:
    model.create_topic("t")
    model.create_queue("a")
    sid = model.subscribe("t", "a", filter_policy={"kind": ["a"]})
    assert model.subscribe("t", "a", filter_policy='{"kind": ["a"]}') == sid
    with pytest.raises(AlreadyExists):
        model.subscribe("t", "a")


def test_pattern_feeds_matching_topics_created_later(model: ModelBroker) -> None:
    model.create_queue("q")
    model.create_topic("orders")
    model.subscribe("orders.>", "q")
    model.create_topic("orders.eu.created")
    assert model.publish("orders.eu.created", b"x").deliveries == 1
    assert model.publish("orders", b"x").deliveries == 0
    assert topic_stats(model, "orders.eu.created").subscriptions == 1
    with pytest.raises(InvalidArgument):
        model.subscribe("orders.>.x", "q")


def test_model_redrive_of_a_fifo_dead_letter_queue_moves_every_visible_copy(
        model: ModelBroker) -> None:
    # The model, as the broker, took only the groups' heads (one per group a call).
    model.create_queue("dlq", fifo=True, content_dedup=True)
    model.create_queue("f", fifo=True, content_dedup=True, max_receive_count=1,
                       dead_letter_queue="dlq")
    model.send_batch("f", [PublishEntry(f"a{n}".encode(), group_id="a") for n in range(3)])
    for _ in range(3):
        for message in model.receive("f", max_messages=10):
            model.term(message.receipt)
    assert model.redrive("dlq") == 3
    bodies = []
    while got := model.receive("f", max_messages=10):
        bodies += [message.body for message in got]
        model.ack(got[0].receipt)
    assert bodies == [b"a0", b"a1", b"a2"]


def test_a_content_dedup_fifo_topic_feeds_a_fifo_queue_without_content_dedup(
        model: ModelBroker) -> None:
    # copies of a content_dedup topic carry the body hash as their dedup key into queues
    model.create_topic("orders", fifo=True, content_dedup=True)
    model.create_topic("refunds", fifo=True, content_dedup=True)
    model.create_queue("billing", fifo=True)
    model.subscribe("orders", "billing")
    model.subscribe("refunds", "billing")
    first = model.publish("orders", b"order 1", group_id="g")
    assert (first.deliveries, first.duplicate) == (1, False)
    again = model.publish("orders", b"order 1", group_id="g")
    assert (again.message_id, again.duplicate) == (first.message_id, True)
    assert model.publish("refunds", b"order 1", group_id="g").deliveries == 0
    assert model.publish("refunds", b"order 2", group_id="g").deliveries == 1
    stats = queue_stats(model, "billing")
    assert (stats.enqueued, stats.duplicates, stats.dedup_entries) == (2, 1, 2)
    with pytest.raises(InvalidArgument, match="dedup_id"):
        model.send("billing", b"order 3", group_id="g")
    assert bodies(model.receive("billing")) == [b"order 1"]


def test_set_filter_policy_keeps_the_scope_unless_one_is_given(model: ModelBroker) -> None:
    model.create_topic("t")
    model.create_queue("q")
    sid = model.subscribe("t", "q", filter_policy={"a": ["x"]}, filter_scope="body")
    model.set_filter_policy(sid, {"a": ["y"]})
    assert model.publish("t", b'{"a": "y"}').deliveries == 1
    model.set_filter_policy(sid, {"a": {"b": ["z"]}})          # nested: body scope only
    assert model.publish("t", b'{"a": {"b": "z"}}').deliveries == 1
    model.set_filter_policy(sid, {"a": ["y"]}, filter_scope="attributes")
    assert model.publish("t", b"", attributes={"a": "y"}).deliveries == 1
    with pytest.raises(InvalidFilterPolicy, match="nested policy objects need scope"):
        model.set_filter_policy(sid, {"a": {"b": ["z"]}})     # kept scope: attributes
    assert model.publish("t", b"", attributes={"a": "y"}).deliveries == 1
