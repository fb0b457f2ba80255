"""The order of a round's pushes and publish answers: a bound server driven by hand, a
round at a time (``Server.run_round``, a documented test hook), its loop not running."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fastfanout._ext.wire import encode_entries
from fastfanout.server.loop import Server
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status


def _bound_server(tmp_path: Path) -> tuple[Server, list[int]]:
    """A bound server whose loop never runs; its replies are recorded, not sent."""
    server = Server(f"ipc://{tmp_path}/rounds.sock")
    server.bind()
    statuses: list[int] = []
    transport: Any = server.transport

    def record(frames: list[bytes]) -> None:
        statuses.append(protocol.decode_header(frames[1])[1])

    transport.send_reply = record
    server.broker.create_topic("t")
    server.broker.create_queue("q")
    server.broker.subscribe("t", "q")
    consume = protocol.encode_payload([[], {"queue": "q", "prefetch": 100}])
    server.run_round([[b"consumer", protocol.encode_header(Opcode.CONSUME, 1), consume]])
    assert statuses == [Status.OK]   # the CONSUME's answer (nothing to push yet)
    statuses.clear()
    return server, statuses


def _publish(request_id: int) -> list[bytes]:
    return [b"publisher", protocol.encode_header(Opcode.PUBLISH, request_id), b"t",
            encode_entries([b"m%d" % request_id])]


def test_a_lone_publish_is_answered_after_its_push(tmp_path: Path) -> None:
    server, statuses = _bound_server(tmp_path)
    try:
        server.run_round([_publish(7)])
        assert statuses == [Status.PUSH, Status.OK]
    finally:
        server.stop()


def test_several_publishes_are_answered_before_the_push(tmp_path: Path) -> None:
    server, statuses = _bound_server(tmp_path)
    try:
        server.run_round([_publish(request_id) for request_id in (7, 8, 9)])
        assert statuses == [Status.OK, Status.OK, Status.OK, Status.PUSH]
        assert server.counters["pushed_messages"] == 3   # one push of all three
    finally:
        server.stop()


def test_a_round_is_driven_by_hand_only_on_a_bound_server_whose_loop_does_not_run(
        tmp_path: Path) -> None:
    server = Server(f"ipc://{tmp_path}/unbound.sock")
    with pytest.raises(RuntimeError, match="bound server"):
        server.run_round([])
    server.start()
    try:
        with pytest.raises(RuntimeError, match="loop does not run"):
            server.run_round([])
    finally:
        server.stop()
