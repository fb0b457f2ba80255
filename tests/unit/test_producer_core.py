"""The producers' core with no I/O: offers in, frames out; answers in, counters and kept frames."""

from __future__ import annotations

import pytest

from fastfanout._ext.wire import count_of
from fastfanout.client.core import ConnectionCore, Request
from fastfanout.client.producers import ProducerCore, producer_limits
from fastfanout.errors import (
    Closed,
    InvalidArgument,
    MessageTooLarge,
    QueueFull,
    RequestTooLarge,
)
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status


def make(batch_messages: int = 3, batch_bytes: int = 1 << 20,
         max_in_flight: int = 2) -> tuple[ProducerCore, ConnectionCore]:
    connection = ConnectionCore("ipc://test", linger=0.01, batch_messages=10,
                                batch_bytes=1 << 20, bind=lambda batch, request: None)
    return ProducerCore("t", batch_messages, batch_bytes, max_in_flight, 0.01), connection


def send(core: ProducerCore, connection: ConnectionCore) -> tuple[Request, bytes]:
    """Take the open frame and queue it as a PUBLISH, as a driver does."""
    frame = core.builder.take()
    request = connection.publish_frame(Opcode.PUBLISH, core.topic, frame)
    core.sent(request, frame)
    return request, frame


def answer(connection: ConnectionCore, request: Request, count: int) -> None:
    connection.receive([protocol.encode_header(Status.OK, request.request_id),
                        protocol.encode_results(list(range(count)), [1] * count,
                                                [False] * count)], 0.0)


def test_a_frame_leaves_as_one_publish_and_counts_as_in_flight() -> None:
    core, connection = make(batch_messages=3)
    for n in range(3):
        core.builder.append_body(b"m%d" % n)
    request, frame = send(core, connection)
    (sent,) = connection.outbox
    assert protocol.decode_header(sent[0])[1:] == (Opcode.PUBLISH, request.request_id)
    assert sent[1:] == [b"t", frame] and count_of(frame) == 3
    assert (core.pending, core.unanswered(), list(core.in_flight)) == (3, 1, [request])


def test_an_answer_counts_the_published_and_frees_the_slot() -> None:
    core, connection = make()
    for n in range(3):
        core.builder.append_body(b"%d" % n)
    request, _ = send(core, connection)
    answer(connection, request, 3)
    assert core.unanswered() == 0
    results = core.answered(request)
    assert not isinstance(results, Exception) and len(results) == 3
    assert (core.published, core.pending, core.in_flight) == (3, 0, {})


def test_an_answer_taken_twice_is_counted_and_kept_once() -> None:
    """The producer's thread and a closing client's may both wait for the oldest answer."""
    core, connection = make()
    core.builder.append_body(b"a")
    published, _ = send(core, connection)
    core.builder.append_body(b"b")
    refused, frame = send(core, connection)
    answer(connection, published, 1)
    connection.receive([protocol.encode_header(Status.ERROR, refused.request_id),
                        protocol.encode_error(QueueFull("full"))], 0.0)
    first, second = core.answered(published), core.answered(published)
    assert not isinstance(second, Exception) and len(second) == len(first) == 1
    assert isinstance(core.answered(refused), QueueFull)
    assert isinstance(core.answered(refused), QueueFull)
    assert (core.published, list(core.kept), core.refused_frames) == (1, [frame], 1)


def test_a_refusal_keeps_the_frame_and_counts_it() -> None:
    core, connection = make()
    core.builder.append_body(b"a")
    request, frame = send(core, connection)
    connection.receive([protocol.encode_header(Status.ERROR, request.request_id),
                        protocol.encode_error(QueueFull("full"))], 0.0)
    error = core.answered(request)
    assert isinstance(error, QueueFull)
    assert list(core.kept) == [frame]
    assert (core.refused_frames, core.published, core.pending) == (1, 0, 1)


def test_pending_counts_open_queued_in_flight_and_kept_frames() -> None:
    core, connection = make(batch_messages=2)
    for n in range(2):
        core.builder.append_body(b"%d" % n)
    send(core, connection)                         # 2 in flight
    for n in range(2):
        core.builder.append_body(b"%d" % n)
    core.queued.append(core.builder.take())        # 2 queued
    core.builder.append_body(b"x")
    assert core.refused(core.builder.take(), QueueFull("full"))   # 1 kept
    core.builder.append_body(b"y")                 # 1 open
    assert core.pending == 6 and core.refused_frames == 1


def test_a_frame_refused_for_its_size_is_dropped_not_kept() -> None:
    core, _ = make()
    core.builder.append_body(b"x")
    assert not core.refused(core.builder.take(), MessageTooLarge("over the limit"))
    core.builder.append_body(b"y")
    assert not core.refused(core.builder.take(), RequestTooLarge("over the limit"))
    assert not core.kept and core.pending == 0
    assert core.refused_frames == core.dropped_frames == 2
    core.builder.append_body(b"z")
    core.kept.append(core.builder.take())

    def refuse(frame: bytes) -> Request:
        raise RequestTooLarge("too large")

    with pytest.raises(RequestTooLarge):           # a kept frame that cannot be sent
        core.send_kept(refuse)
    assert not core.kept and core.dropped_frames == 3


def test_a_closed_producer_refuses_offers() -> None:
    core, _ = make()
    core.check_open()
    core.closed = True
    with pytest.raises(Closed):
        core.check_open()


def test_producer_limits_take_the_clients_defaults_and_refuse_bad_ones() -> None:
    assert producer_limits("t", None, None, 8, None, (10, 100, 0.5)) == (10, 100, 0.5)
    assert producer_limits("t", 2, 3, 1, 0, (10, 100, 0.5)) == (2, 3, 0.0)
    for bad in ({"batch_messages": 0}, {"batch_bytes": True}, {"max_in_flight": 1.5},
                {"linger": -1.0}, {"topic": b"t"}):
        arguments = {"topic": "t", "batch_messages": None, "batch_bytes": None,
                     "max_in_flight": 8, "linger": None, **bad}
        with pytest.raises(InvalidArgument):
            producer_limits(defaults=(10, 100, 0.5), **arguments)  # type: ignore[arg-type]
