"""Requests and replies on the embedded broker (docs/semantics.md, "Requests and replies").

A request is published with a ``fastfanout.reply_to`` address in the broker's inbox; a
responder's ``message.reply`` hands the reply straight back to the waiting ``request``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from fastfanout import (
    Broker,
    Closed,
    InvalidArgument,
    Message,
    NoReply,
    NoResponders,
    Reply,
)
from fastfanout.records import REPLY_TO
from fastfanout.semantics.replies import parse_address

DEADLINE = 10.0


@pytest.fixture
def broker() -> Iterator[Broker]:
    with Broker() as broker:
        broker.create_topic("t")
        broker.create_queue("q")
        broker.subscribe("t", "q")
        yield broker


def responding(broker: Broker, queue: str, answer: Callable[[Message], None],
               count: int = 1) -> threading.Thread:
    """A thread answering ``count`` requests of ``queue`` with ``answer`` (then acking)."""

    def run() -> None:
        for _ in range(count):
            (message,) = broker.receive(queue, wait=DEADLINE)
            answer(message)
            message.ack()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_request_gets_the_reply_of_its_responder(broker: Broker) -> None:
    thread = responding(broker, "q", lambda m: m.reply(
        bytes(m.body).upper(), attributes={"seen": m.attributes["n"]}))
    reply = broker.request("t", b"hello", attributes={"n": 7}, timeout=DEADLINE)
    thread.join(DEADLINE)
    assert reply == Reply(b"HELLO", {"seen": 7})
    stats = broker.stats()
    assert (stats.replies.requests, stats.replies.replies,
            stats.replies.replies_dropped) == (1, 1, 0)
    assert stats.queues["q"].acked == 1


def test_the_request_carries_an_address_in_the_brokers_inbox(broker: Broker) -> None:
    seen: list[Message] = []
    thread = responding(broker, "q", lambda m: (seen.append(m), m.reply(b"ok")))
    broker.request("t", b"x", attributes={"keep": "me"}, timeout=DEADLINE)
    thread.join(DEADLINE)
    (message,) = seen
    assert message.reply_to == message.attributes[REPLY_TO]
    assert message.attributes["keep"] == "me"
    inbox, number = parse_address(message.reply_to)
    assert inbox.startswith("_INBOX.") and number >= 1


def test_each_request_waits_for_its_own_reply(broker: Broker) -> None:
    # answered in reverse order: each requester still gets the answer to its own body
    requests = 4
    got: dict[int, bytes] = {}

    def answer_all() -> None:
        messages = []
        while len(messages) < requests:
            messages += broker.receive("q", max_messages=requests, wait=DEADLINE)
        for message in reversed(messages):
            message.reply(b"re:" + bytes(message.body))
            message.ack()

    responder = threading.Thread(target=answer_all, daemon=True)
    responder.start()

    def ask(index: int) -> None:
        got[index] = broker.request("t", b"%d" % index, timeout=DEADLINE).body

    askers = [threading.Thread(target=ask, args=(i,)) for i in range(requests)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(DEADLINE)
    responder.join(DEADLINE)
    assert got == {i: b"re:%d" % i for i in range(requests)}


def test_the_first_reply_wins_and_a_second_is_dropped_and_counted(broker: Broker) -> None:
    broker.create_queue("q2")
    broker.subscribe("t", "q2")
    first = responding(broker, "q", lambda m: m.reply(b"first"))
    reply = broker.request("t", b"x", timeout=DEADLINE)
    first.join(DEADLINE)
    assert reply.body == b"first"
    (late,) = broker.receive("q2")
    late.reply(b"second")   # not an error: the requester no longer waits
    assert broker.stats().replies.replies_dropped == 1


def test_no_subscription_is_no_responders_at_once(broker: Broker) -> None:
    broker.create_topic("lonely")
    with pytest.raises(NoResponders, match="reached no queue"):
        broker.request("lonely", b"x", timeout=3600)


def test_a_filter_policy_letting_it_through_nowhere_is_no_responders(broker: Broker) -> None:
    broker.create_topic("f")
    broker.create_queue("fq")
    broker.subscribe("f", "fq", filter_policy={"kind": ["wanted"]})
    with pytest.raises(NoResponders):
        broker.request("f", b"x", attributes={"kind": "other"})
    assert broker.stats().queues["fq"].enqueued == 0


def test_a_duplicate_request_is_no_responders(broker: Broker) -> None:
    broker.create_topic("d", content_dedup=False)
    broker.create_queue("dq")
    broker.subscribe("d", "dq")
    with pytest.raises(NoReply):
        broker.request("d", b"x", dedup_id="one", timeout=0.05)
    with pytest.raises(NoResponders, match="duplicate"):
        broker.request("d", b"x", dedup_id="one", timeout=0.05)


def test_a_request_nobody_took_in_time_expires_with_ttl_timeout(broker: Broker) -> None:
    # once the requester gave up, nobody works on it for nothing
    with pytest.raises(NoReply, match=r"within 0\.05 s"):
        broker.request("t", b"x", timeout=0.05, ttl=0.02)
    assert broker.receive("q") == []
    assert broker.stats().queues["q"].dropped["expired"] == 1


def test_an_expired_request_is_dead_lettered_where_its_queue_has_a_dlq(broker: Broker) -> None:
    broker.create_queue("dead")
    broker.create_queue("dq", dead_letter_queue="dead")
    broker.subscribe("t", "dq")
    with pytest.raises(NoReply):
        broker.request("t", b"x", timeout=0.05, ttl=0.02)
    assert broker.receive("dq") == []   # expired at the head of its queue
    (dead,) = broker.receive("dead")
    assert dead.dead_letter is not None and dead.dead_letter.reason == "expired"
    assert dead.reply_to is not None   # a late reply from there is dropped, counted


def test_a_request_that_timed_out_stays_for_a_responder(broker: Broker) -> None:
    # no ttl by default: it applies to every queue the request reaches (an audit's too)
    broker.create_queue("audit")
    broker.subscribe("t", "audit")
    with pytest.raises(NoReply, match=r"within 0\.05 s"):
        broker.request("t", b"x", timeout=0.05)
    assert [m.body for m in broker.receive("audit")] == [b"x"]
    (message,) = broker.receive("q")   # still there for a responder
    assert message.body == b"x"
    message.reply(b"too late")
    stats = broker.stats().replies
    assert (stats.replies, stats.replies_dropped) == (0, 1)


def test_no_reply_is_a_timeout_error(broker: Broker) -> None:
    with pytest.raises(TimeoutError):
        broker.request("t", b"x", timeout=0.01)


def test_reply_by_address_is_what_message_reply_does(broker: Broker) -> None:
    thread = responding(broker, "q", lambda m: broker.reply(m.reply_to or "", b"by address"))
    assert broker.request("t", b"x", timeout=DEADLINE).body == b"by address"
    thread.join(DEADLINE)


def test_a_fifo_request_takes_its_group(broker: Broker) -> None:
    broker.create_topic("ft.fifo", fifo=True, content_dedup=True)
    broker.create_queue("fq.fifo", fifo=True)
    broker.subscribe("ft.fifo", "fq.fifo")
    thread = responding(broker, "fq.fifo", lambda m: m.reply(m.group_id.encode()))
    assert broker.request("ft.fifo", b"x", group_id="g7", timeout=DEADLINE).body == b"g7"
    thread.join(DEADLINE)


def test_a_reply_takes_any_contiguous_buffer(broker: Broker) -> None:
    table = np.arange(8, dtype=np.float32)
    thread = responding(broker, "q", lambda m: m.reply(table))
    assert broker.request("t", b"x", timeout=DEADLINE).body == table.tobytes()
    thread.join(DEADLINE)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), 3601, "5", None])
def test_a_bad_timeout_is_refused_and_publishes_nothing(broker: Broker, timeout) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        broker.request("t", b"x", timeout=timeout)
    assert broker.stats().topics["t"].published == 0
    assert broker.stats().replies.requests == 0


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), 366 * 86400, "5"])
def test_a_bad_ttl_is_refused_and_publishes_nothing(broker: Broker, ttl) -> None:
    with pytest.raises(InvalidArgument, match="ttl"):
        broker.request("t", b"x", timeout=DEADLINE, ttl=ttl)
    assert broker.stats().topics["t"].published == 0
    assert broker.stats().replies.requests == 0


def test_the_reply_to_attribute_is_the_requests_own(broker: Broker) -> None:
    with pytest.raises(InvalidArgument, match="set by request"):
        broker.request("t", b"x", attributes={REPLY_TO: "_INBOX.0123456789abcdef.1"})
    assert broker.stats().topics["t"].published == 0


def test_a_bad_request_argument_publishes_nothing(broker: Broker) -> None:
    with pytest.raises(InvalidArgument):
        broker.request("t", b"x", attributes={"n": object()})   # type: ignore[dict-item]
    with pytest.raises(InvalidArgument):
        broker.request("t", np.zeros((4, 4))[:, 1])
    assert broker.stats().topics["t"].published == 0
    assert broker.stats().replies.requests == 0


@pytest.mark.parametrize("address", ["", "x", "_INBOX.0123456789abcdef", "_INBOX.0123.1",
                                     "_INBOX.0123456789ABCDEF.1", "_INBOX.0123456789abcdef.0",
                                     "_INBOX.0123456789abcdef.99999999999999999999", 7, None])
def test_a_bad_address_is_refused(broker: Broker, address) -> None:
    with pytest.raises(InvalidArgument, match="reply address"):
        broker.reply(address, b"x")
    assert broker.stats().replies.replies_dropped == 0


def test_a_reply_to_another_inbox_is_dropped_and_counted(broker: Broker) -> None:
    broker.reply("_INBOX.0123456789abcdef.1", b"nobody here")
    assert broker.stats().replies.replies_dropped == 1


def test_a_message_that_asked_for_no_reply_cannot_be_answered(broker: Broker) -> None:
    broker.publish("t", b"plain")
    (message,) = broker.receive("q")
    assert message.reply_to is None
    with pytest.raises(InvalidArgument, match="asked for no reply"):
        message.reply(b"x")


def test_a_bad_reply_body_or_attributes_is_refused_and_the_request_still_waits(
        broker: Broker) -> None:
    errors: list[Exception] = []

    def answer(message: Message) -> None:
        for bad in ({"body": np.zeros((4, 4))[:, 1]},
                    {"body": b"x", "attributes": {"n": float("nan")}}):
            try:
                message.reply(**bad)
            except InvalidArgument as exc:
                errors.append(exc)
        message.reply(b"good")

    thread = responding(broker, "q", answer)
    assert broker.request("t", b"x", timeout=DEADLINE).body == b"good"
    thread.join(DEADLINE)
    assert len(errors) == 2


def test_closing_the_broker_ends_a_waiting_request(broker: Broker) -> None:
    outcome: list[BaseException] = []

    def ask() -> None:
        try:
            broker.request("t", b"x", timeout=DEADLINE)
        except BaseException as exc:   # the outcome is the assertion
            outcome.append(exc)

    asker = threading.Thread(target=ask)
    asker.start()
    deadline = time.monotonic() + DEADLINE
    while not broker.stats().queues["q"].enqueued:   # a deadline poll: it was published
        assert time.monotonic() < deadline, "the request was never published"
        time.sleep(0.005)
    broker.close()
    asker.join(DEADLINE)
    assert not asker.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], Closed)
    with pytest.raises(Closed):
        broker.request("t", b"x")
    with pytest.raises(Closed):
        broker.reply("_INBOX.0123456789abcdef.1", b"x")
