"""A held publish is run again only once its queue has the room it needed (holds.py)."""

from __future__ import annotations

from typing import Any

from fastfanout.errors import QueueFull
from fastfanout.server.holds import HeldRequest, HeldRequests


def _refused(runs: list[int], tag: int) -> Any:
    def run() -> list[bytes]:
        runs.append(tag)
        error = QueueFull("full")
        error.hold = True
        error.room = ("q", 10, 640)
        raise error
    return run


def test_a_request_short_of_room_is_not_run_until_there_is_room_or_its_deadline() -> None:
    held = HeldRequests(timeout=30.0)
    runs: list[int] = []
    fails: list[BaseException] = []
    room = {"q": False}
    checked: list[tuple[str, int, int]] = []

    def has_room(queue: str, messages: int, size: int) -> bool:
        checked.append((queue, messages, size))
        return room[queue]

    def reply(request: HeldRequest, payload: list[bytes]) -> None:
        raise AssertionError("not answered")

    held.hold("a", 1, _refused(runs, 1), 0.0, ("q", 10, 640))
    held.hold("a", 2, _refused(runs, 2), 0.0)   # behind it, never run yet
    for _ in range(5):   # acks that freed too little: nothing is made and freed again
        assert held.retry(1.0, reply, lambda h, e: fails.append(e), has_room) == 0
    assert runs == [] and len(held) == 2 and checked[-1] == ("q", 10, 640)
    room["q"] = True
    held.retry(2.0, reply, lambda h, e: fails.append(e), has_room)
    assert runs == [1] and len(held) == 2   # run again, refused again: still first
    room["q"] = False
    assert held.retry(31.0, reply, lambda h, e: fails.append(e), has_room) == 2
    assert runs == [1, 1, 2] and len(fails) == 2 and len(held) == 0   # deadlines: run


def test_without_a_room_check_every_retry_runs() -> None:
    held = HeldRequests(timeout=30.0)
    runs: list[int] = []
    held.hold("a", 1, _refused(runs, 1), 0.0, ("q", 10, 640))
    for _ in range(3):
        held.retry(1.0, lambda h, p: None, lambda h, e: None)
    assert runs == [1, 1, 1]
