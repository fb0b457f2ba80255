"""The order of a round's pushes and publish answers (server internals, no loop thread)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastfanout._ext.wire import encode_entries
from fastfanout.server.loop import Server
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status


def _bound_server(tmp_path: Path) -> tuple[Server, list[int]]:
    """A bound server whose loop never runs; its replies are recorded, not sent."""
    server = Server(f"ipc://{tmp_path}/rounds.sock")
    server.bind()
    statuses: list[int] = []
    transport: Any = server._transport

    def record(frames: list[bytes]) -> None:
        statuses.append(protocol.decode_header(frames[1])[1])

    transport.send_reply = record
    server.broker.create_topic("t")
    server.broker.create_queue("q")
    server.broker.subscribe("t", "q")
    consume = protocol.encode_payload([[], {"queue": "q", "prefetch": 100}])
    server._handle([b"consumer", protocol.encode_header(Opcode.CONSUME, 1), consume])
    statuses.clear()   # the CONSUME's answer
    return server, statuses


def _publish(server: Server, request_id: int) -> None:
    server._handle([b"publisher", protocol.encode_header(Opcode.PUBLISH, request_id), b"t",
                    encode_entries([b"m%d" % request_id])])


def _close(server: Server) -> None:
    transport: Any = server._transport
    transport.close(linger=0)
    server._transport = None
    assert server._lock is not None
    server._lock.release()


def test_a_lone_publish_is_answered_after_its_push(tmp_path: Path) -> None:
    server, statuses = _bound_server(tmp_path)
    try:
        _publish(server, 7)
        assert statuses == []                 # held for the end of the round
        server._push_and_answer(waiting=True)
        assert statuses == [Status.PUSH, Status.OK]
    finally:
        _close(server)


def test_several_publishes_are_answered_before_the_push(tmp_path: Path) -> None:
    server, statuses = _bound_server(tmp_path)
    try:
        for request_id in (7, 8, 9):
            _publish(server, request_id)
        server._push_and_answer(waiting=True)
        assert statuses == [Status.OK, Status.OK, Status.OK, Status.PUSH]
        assert server.counters["pushed_messages"] == 3   # one push of all three
    finally:
        _close(server)
