"""The embedded broker's one-message calls, in C (issue 15): same rules as the others."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pytest
from waits import wait_until_parked

from fastfanout import Broker
from fastfanout._ext.store import DEBUG as STORE_DEBUG
from fastfanout.errors import (
    Closed,
    InvalidArgument,
    MessageTooLarge,
    NotFound,
    QueueFull,
    StaleReceipt,
)
from fastfanout.records import PublishResult


@pytest.fixture
def broker() -> Broker:
    broker = Broker()
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    return broker


def test_publish_send_receive_ack_one_at_a_time(broker: Broker) -> None:
    first = broker.publish("t", b"a")
    second = broker.send("q", bytearray(b"b"))
    assert (first.deliveries, second.deliveries) == (1, 1)
    assert second.message_id > first.message_id
    (message,) = broker.receive("q")
    assert (message.body, message.queue, message.receive_count) == (b"a", "q", 1)
    message.ack()
    with pytest.raises(StaleReceipt):
        message.ack()
    (message,) = broker.receive("q")
    message.nack(delay=0)
    (again,) = broker.receive("q")
    assert again.id == message.id and again.receive_count == 2
    again.term()
    assert broker.receive("q") == []
    stats = broker.stats().queues["q"]
    assert stats.acked == 1 and stats.leased == 0


def test_bad_arguments_raise_and_change_nothing(broker: Broker) -> None:
    with pytest.raises(NotFound):
        broker.publish("nope", b"x")
    with pytest.raises(NotFound):
        broker.send("nope", b"x")
    with pytest.raises(NotFound):
        broker.receive("nope")
    with pytest.raises(InvalidArgument):
        broker.publish("t", "text")   # not bytes-like
    with pytest.raises(InvalidArgument):
        broker.publish(7, b"x")       # type: ignore[arg-type]
    assert broker.stats().queues["q"].enqueued == 0


def test_a_closed_broker_refuses(broker: Broker) -> None:
    broker.close()
    for call in (lambda: broker.publish("t", b"x"), lambda: broker.send("q", b"x"),
                 lambda: broker.receive("q")):
        with pytest.raises(Closed):
            call()


def test_a_publish_wakes_a_waiting_receiver(broker: Broker) -> None:
    got: list[bytes] = []
    started = threading.Event()

    def wait_for_one() -> None:
        started.set()
        with contextlib.suppress(Closed):
            got.extend(message.body for message in broker.receive("q", wait=20.0))

    receiver = threading.Thread(target=wait_for_one)
    receiver.start()
    try:
        assert started.wait(5.0)
        while broker.stats().queues["q"].visible == 0 and receiver.is_alive():
            broker.publish("t", b"wake")   # until the receiver takes one
            receiver.join(0.05)
        receiver.join(5.0)                 # woken at once, not at the end of its wait
        assert not receiver.is_alive() and got == [b"wake"]
    finally:
        broker.close()                     # a receiver still waiting raises Closed
        receiver.join(5.0)


def test_a_clock_that_is_not_seconds_is_refused() -> None:
    broker = Broker(clock=lambda: "now")   # type: ignore[arg-type,return-value]
    with pytest.raises(InvalidArgument):
        broker.create_queue("q")
    broker = Broker(clock=lambda: float("nan"))
    with pytest.raises(InvalidArgument):
        broker.send("q", b"x")



# -- per-message publish and send: one C call, nothing made but the result ----------------


def _python_frames(call: Callable[[], object]) -> list[str]:
    """The Python functions ``call`` runs (``sys.setprofile``'s ``call`` events)."""
    frames: list[str] = []

    def profile(frame: FrameType, event: str, arg: object) -> None:
        # the debug build traces Cython functions as frames of their .pyx sources: those
        # are native work, not Python frames
        if event == "call" and not frame.f_code.co_filename.endswith((".pyx", ".pxd", ".pxi")):
            frames.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        call()
    finally:
        sys.setprofile(None)
    return [name for name in frames if name != "_python_frames"]


@pytest.mark.skipif(STORE_DEBUG, reason="the debug build takes the Python path on purpose "
                    "(it journals and checks the store's invariants on every call)")
def test_a_bare_publish_or_send_runs_no_python_frame(broker: Broker) -> None:
    assert _python_frames(lambda: broker.publish("t", b"x")) == ["<lambda>"]
    assert _python_frames(lambda: broker.send("q", b"y")) == ["<lambda>"]
    assert [m.body for m in broker.receive("q", max_messages=10)] == [b"x", b"y"]


def test_a_publish_result_is_a_plain_publish_result(broker: Broker) -> None:
    body = b"body"
    refs = sys.getrefcount(body)
    result = broker.publish("t", body)
    assert sys.getrefcount(body) == refs            # the body is copied, not kept
    assert type(result) is PublishResult
    assert result == PublishResult(result.message_id, 1, False)
    assert sys.getrefcount(result) == 2             # the result is the caller's alone
    assert result._replace(deliveries=3).deliveries == 3
    assert hash(result) == hash(tuple(result))
    assert repr(result) == f"PublishResult(message_id={result.message_id}, deliveries=1, " \
        "duplicate=False)"
    assert broker.publish("t", body).message_id == result.message_id + 1
    assert broker.send("q", body) == PublishResult(result.message_id + 2, 1, False)


def test_per_message_calls_leak_nothing(broker: Broker) -> None:
    """Python blocks stay flat over many calls (bodies live in the store's own memory)."""
    publish = broker.publish
    body = b"x" * 64
    for _ in range(1000):   # warm up: interned ints, the store's first arrays
        publish("t", body)
    before = sys.getallocatedblocks()
    for _ in range(20_000):
        publish("t", body)
    assert sys.getallocatedblocks() - before < 200
    assert broker.stats().queues["q"].visible == 21_000


def test_options_take_the_python_path_with_the_same_results(broker: Broker) -> None:
    first = broker.publish("t", b"a", attributes={"k": "v"}, priority=None)
    second = broker.send("q", b"b", delay=0.0)
    assert (first.deliveries, second.deliveries) == (1, 1)
    assert second.message_id == first.message_id + 1
    (message,) = broker.receive("q")
    assert message.attributes == {"k": "v"}
    with pytest.raises(InvalidArgument):
        broker.publish("t", b"c", priority=300)
    with pytest.raises(TypeError):
        broker.publish("t", b"c", colour="red")   # type: ignore[call-arg]
    assert broker.publish(topic="t", body=b"d").deliveries == 1


def test_a_subclass_publish_stays_in_charge() -> None:
    seen: list[bytes] = []

    class Counting(Broker):
        def publish(self, topic: str, body: Any, **options: Any) -> PublishResult:
            seen.append(bytes(body))
            return super().publish(topic, body, **options)

    broker = Counting()
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")
    assert broker.publish("t", b"a").deliveries == 1
    assert seen == [b"a"]
    assert broker.send("q", b"b").deliveries == 1   # send is still the native one


def test_single_publish_keeps_every_queue_rule() -> None:
    """The one-message path runs the batch path's checks: size, room, dedup, FIFO."""
    broker = Broker()
    broker.create_topic("t")
    broker.create_queue("small", max_message_size=4, max_messages=1)
    broker.create_queue("dedup", content_dedup=True)
    broker.create_queue("fifo", fifo=True, content_dedup=True)
    broker.subscribe("t", "small")
    broker.subscribe("t", "dedup")
    with pytest.raises(MessageTooLarge):
        broker.publish("t", b"12345")
    assert broker.publish("t", b"1").deliveries == 2
    with pytest.raises(QueueFull):
        broker.publish("t", b"2")   # small is full: no copy anywhere
    stats = broker.stats().queues
    assert (stats["small"].visible, stats["dedup"].visible) == (1, 1)
    assert (stats["small"].rejected, stats["small"].oversized) == (1, 1)
    first = broker.send("dedup", b"same")
    again = broker.send("dedup", b"same")
    assert again == PublishResult(first.message_id, 0, True)
    with pytest.raises(InvalidArgument, match="group_id"):
        broker.send("fifo", b"x")
    assert broker.stats().queues["fifo"].enqueued == 0


def test_the_system_clock_read_in_c_is_time_time(broker: Broker) -> None:
    """With the default clock the broker reads the time in C: the same seconds."""
    before = time.time()
    broker.publish("t", b"x")
    after = time.time()
    (message,) = broker.receive("q")
    assert before - 1e-6 <= message.timestamp <= after + 1e-6


def test_a_bare_publish_wakes_a_waiting_receive_frame(broker: Broker) -> None:
    """The server's waiting receive (``ServerPort.receive_frame``) is a parked receiver too:
    the one-call publish path must wake it, not leave it to its wait's end."""
    port = broker.server_port()
    got: list[tuple[bytes, int]] = []
    waiter = threading.Thread(target=lambda: got.append(port.receive_frame("q", wait=20.0)))
    waiter.start()
    wait_until_parked(broker)   # parked, holding no lock
    started = time.monotonic()
    broker.publish("t", b"wake")
    waiter.join(30)
    assert got and got[0][1] == 1
    assert time.monotonic() - started < 10   # woken, not found at the 20 s wait's end


# -- per-message receive (waiting or not) and ack: one C call each -------------------------


@pytest.mark.skipif(STORE_DEBUG, reason="the debug build takes the Python path on purpose "
                    "(it journals and checks the store's invariants on every call)")
def test_a_one_message_receive_and_its_ack_run_no_python_frame(broker: Broker) -> None:
    for body in (b"a", b"b", b"c", b"d"):
        broker.send("q", body)
    got: list[Any] = []
    assert _python_frames(lambda: got.extend(broker.receive("q"))) == ["<lambda>"]
    assert _python_frames(lambda: got.extend(broker.receive("q", wait=20.0))) == ["<lambda>"]
    assert _python_frames(lambda: got.extend(broker.receive("q", wait=1))) == ["<lambda>"]
    assert [message.body for message in got] == [b"a", b"b", b"c"]
    assert _python_frames(got[0].ack) == []
    assert _python_frames(lambda: broker.ack(got[1].receipt)) == ["<lambda>"]
    got[2].ack()
    (last,) = broker.receive("q", max_messages=10)   # the Python path's message
    assert _python_frames(last.ack) == []
    stats = broker.stats().queues["q"]
    assert (stats.acked, stats.messages) == (4, 0)


def test_a_receiver_finding_messages_does_not_park(broker: Broker) -> None:
    for index in range(3):
        broker.send("q", b"%d" % index)
    for index in range(3):
        (message,) = broker.receive("q", wait=20.0)
        assert message.body == b"%d" % index
        message.ack()
    assert broker.receiver_parks == 0
    assert broker.receive("q", wait=0.0) == [] and broker.receiver_parks == 0


def test_a_parked_receiver_is_woken_once_by_the_next_message(broker: Broker) -> None:
    got: list[list[Any]] = []
    waiter = threading.Thread(target=lambda: got.append(broker.receive("q", wait=20.0)))
    waiter.start()
    wait_until_parked(broker)   # parked, holding no lock
    assert broker.receiver_parks == 1
    started = time.monotonic()
    broker.send("q", b"first")
    broker.send("q", b"second")
    waiter.join(30)
    assert time.monotonic() - started < 10   # woken, not found at the 20 s wait's end
    assert [[m.body for m in messages] for messages in got] == [[b"first"]]
    assert broker.receiver_parks == 1 and broker.waiting_receivers == 0
    assert [m.body for m in broker.receive("q")] == [b"second"]


def test_a_waiting_receive_of_a_queue_deleted_meanwhile_raises_not_found(
        broker: Broker) -> None:
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(broker.receive("q", wait=20.0))
        except NotFound as error:
            outcome.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until_parked(broker)
    broker.delete_queue("q")
    broker.create_queue("r")   # maybe with the deleted queue's id
    broker.send("r", b"new")   # wakes the waiter
    waiter.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound)
    assert [m.body for m in broker.receive("r")] == [b"new"]


@pytest.mark.parametrize("max_messages", [1, 2])   # the one-C-call form and the other
def test_deleting_the_queue_wakes_its_waiting_receive_at_once(
        broker: Broker, max_messages: int) -> None:
    # The waiter used to sleep its whole wait (20 s) unless something else rang the bell.
    outcome: list[object] = []

    def wait() -> None:
        try:
            outcome.append(broker.receive("q", max_messages=max_messages, wait=20.0))
        except NotFound as error:
            outcome.append(error)

    waiter = threading.Thread(target=wait)
    waiter.start()
    wait_until_parked(broker)
    started = time.monotonic()
    broker.delete_queue("q")
    waiter.join(10)
    assert not waiter.is_alive()
    assert time.monotonic() - started < 5.0
    assert len(outcome) == 1 and isinstance(outcome[0], NotFound)
    assert "deleted while waiting" in str(outcome[0])


@pytest.mark.parametrize("wait", [-1.0, 20.5, float("nan"), float("inf"), "1", True, None])
def test_a_bad_wait_is_refused_and_changes_nothing(broker: Broker, wait: Any) -> None:
    broker.send("q", b"x")
    with pytest.raises(InvalidArgument):
        broker.receive("q", wait=wait)
    stats = broker.stats().queues["q"]
    assert (stats.visible, stats.leased) == (1, 0)


def test_other_forms_of_receive_and_ack_take_the_python_path_alike(broker: Broker) -> None:
    for body in (b"a", b"b", b"c"):
        broker.send("q", body)
    first, second = broker.receive("q", max_messages=2, wait=1.0)
    (third,) = broker.receive("q", visibility_timeout=5.0, wait=0)
    assert [m.body for m in (first, second, third)] == [b"a", b"b", b"c"]
    with pytest.raises(InvalidArgument):
        broker.receive("q", max_messages=0)
    with pytest.raises(InvalidArgument):
        broker.receive("q", owner=12345)   # not an open owner tag
    for receipt in (-1, 2**64, "1", 1.0):
        with pytest.raises(InvalidArgument):
            broker.ack(receipt)   # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        broker.ack(first.receipt, session=12345)   # not an open session
    broker.ack(first.receipt, session=0)
    with pytest.raises(StaleReceipt):
        broker.ack(first.receipt)
    broker.ack(second.receipt)
    third.ack()
    with pytest.raises(StaleReceipt):
        third.ack()
    assert broker.stats().queues["q"].acked == 3


def test_an_ack_after_the_lease_ended_is_stale_with_the_system_clock(broker: Broker) -> None:
    """The ack's coarse clock check never hides a lease that has ended by now."""
    broker.create_queue("short", visibility_timeout=0.02)
    broker.send("short", b"x")
    (message,) = broker.receive("short")
    end = message.timestamp + 0.5   # well after the lease ends (the send's time + 20 ms)
    while time.time() < end:   # real time must pass: the lease runs on the system clock
        time.sleep(0.01)
    with pytest.raises(StaleReceipt):
        message.ack()
    with pytest.raises(StaleReceipt):
        broker.ack(message.receipt)
    (again,) = broker.receive("short")
    assert again.receive_count == 2
    again.ack()
    assert broker.stats().queues["short"].acked == 1


def test_received_messages_are_reused_from_a_free_list_without_leaks(broker: Broker) -> None:
    body = b"x" * 64
    send, receive = broker.send, broker.receive
    for _ in range(1000):   # warm up
        send("q", body)
        receive("q", wait=1.0)[0].ack()
    before = sys.getallocatedblocks()
    for _ in range(20_000):
        send("q", body)
        (message,) = receive("q", wait=1.0)
        message.ack()
    assert sys.getallocatedblocks() - before < 200
    assert broker.stats().queues["q"].messages == 0


def test_a_subclass_ack_stays_in_charge_of_message_acks() -> None:
    acked: list[int] = []

    class Counting(Broker):
        def ack(self, receipt: int, *, session: int = 0) -> None:
            acked.append(receipt)
            super().ack(receipt, session=session)

    broker = Counting()
    broker.create_queue("q")
    broker.send("q", b"a")
    broker.send("q", b"b")
    (first,) = broker.receive("q")           # one at a time: still the native receive
    (second,) = broker.receive("q", wait=1.0)
    first.ack()
    broker.ack(second.receipt)
    assert acked == [first.receipt, second.receipt]
    assert broker.stats().queues["q"].acked == 2
