"""The embedded broker's one-message calls, in C (issue 15): same rules as the others."""

from __future__ import annotations

import contextlib
import threading

import pytest

from fastfanout import Broker
from fastfanout.errors import Closed, InvalidArgument, NotFound, StaleReceipt


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

