"""The server's held publishes (fastfanout.server.holds), without a server."""

from __future__ import annotations

from typing import Any

from fastfanout import NotFound, QueueFull
from fastfanout.server.holds import HeldRequest, HeldRequests


def _full() -> QueueFull:
    error = QueueFull("full")
    error.hold = True
    return error


class Room:
    """A queue with ``free`` places: runs take one each, or raise a hold QueueFull."""

    def __init__(self) -> None:
        self.free = 0

    def run(self, tag: str) -> Any:
        def attempt() -> list[bytes]:
            if self.free <= 0:
                raise _full()
            self.free -= 1
            return [tag.encode()]
        return attempt


def test_held_requests_go_through_in_session_order_and_others_proceed() -> None:
    room = Room()
    held = HeldRequests(timeout=10.0)
    replies: list[tuple[str, int]] = []
    failures: list[tuple[int, BaseException]] = []

    def reply(request: HeldRequest, payload: list[bytes]) -> None:
        replies.append((request.session, request.request_id))

    def fail(request: HeldRequest, error: BaseException) -> None:
        failures.append((request.request_id, error))

    held.hold("a", 1, room.run("a1"), now=0.0)
    held.hold("a", 2, lambda: [b"a2 needs no room"], now=0.0)   # waits behind a1 anyway
    held.hold("b", 3, room.run("b3"), now=0.0)
    assert held.waiting("a") and held.waiting("b") and not held.waiting("c")
    assert held.retry(1.0, reply, fail) == 0 and replies == [] and len(held) == 3
    room.free = 1
    held.retry(2.0, reply, fail)
    assert replies == [("a", 1), ("a", 2)]     # a's order kept; b still has no room
    assert not held.waiting("a") and held.waiting("b")
    assert held.retry(20.0, reply, fail) == 1  # b3 past its deadline: QueueFull
    assert [(rid, type(e)) for rid, e in failures] == [(3, QueueFull)] and len(held) == 0


def test_other_errors_and_unexpected_ones_are_answered_and_forgotten() -> None:
    held = HeldRequests(timeout=10.0)
    failures: list[BaseException] = []

    def gone() -> list[bytes]:
        raise NotFound("topic deleted meanwhile")

    def broken() -> list[bytes]:
        raise RuntimeError("bug")

    held.hold("a", 1, gone, now=0.0)
    held.hold("b", 2, broken, now=0.0)
    held.retry(0.0, lambda r, p: None, lambda r, e: failures.append(e))
    assert [type(e) for e in failures] == [NotFound, RuntimeError]
    assert len(held) == 0 and not held.waiting("a") and not held.waiting("b")


def test_dropping_a_session_and_taking_all() -> None:
    held = HeldRequests(timeout=1.0)
    held.hold("a", 1, lambda: [], now=0.0)
    held.hold("b", 2, lambda: [], now=0.0)
    held.drop_session("a")
    assert len(held) == 1 and not held.waiting("a")
    assert [h.request_id for h in held.take_all()] == [2] and len(held) == 0
