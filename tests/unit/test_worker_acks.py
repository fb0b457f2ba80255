"""The per-message path of a sync handler acks its successes together (``Source.ack``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastfanout.workers.handlers import make_handler
from fastfanout.workers.threads import ThreadRunner


def wait_until(condition: Callable[[], bool], what: str, deadline: float = 10.0) -> None:
    """Poll ``condition`` every 5 ms; fail naming ``what`` past ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while not condition():
        assert time.monotonic() < end, f"{what} within {deadline} s"
        time.sleep(0.005)


class FakeMessage:
    def __init__(self, number: int) -> None:
        self.id = number
        self.receive_count = 1
        self.settled: list[str] = []

    def ack(self) -> None:
        self.settled.append("ack")

    def nack(self, delay: float | None = None) -> None:
        self.settled.append("nack")


class FakeSource:
    """One push of ``messages``, then nothing; records the together-acks."""

    def __init__(self, messages: list[FakeMessage]) -> None:
        self.pushes = [messages]
        self.acks: list[list[Any]] = []

    def take(self, max_messages: int, timeout: float) -> list[Any]:
        if self.pushes:
            return list(self.pushes.pop())
        threading.Event().wait(min(timeout, 0.01))
        return []

    def ack(self, messages: list[Any]) -> None:
        self.acks.append(list(messages))

    def close(self, timeout: float = 2.0) -> None:
        pass


def test_successes_of_a_push_are_acked_in_one_call_failures_nacked_alone() -> None:
    messages = [FakeMessage(number) for number in range(50)]
    source = FakeSource(messages)

    def handle(message: FakeMessage) -> None:
        if message.id == 7:
            raise RuntimeError("boom")

    handler = make_handler(handle, "q", prefetch=100).resolved(1, 1)
    stopping = threading.Event()
    runner = ThreadRunner(handler, lambda: source, None, stopping)
    runner.start()
    try:
        wait_until(lambda: runner.stats().processed == 49 and runner.stats().failed == 1,
                   what="the push handled")
        wait_until(lambda: sum(map(len, source.acks)) == 49, what="the acks")
    finally:
        stopping.set()
        runner.join(float("inf"), threading.Event())
    assert source.acks == [[m for m in messages if m.id != 7]]   # one call, in order
    assert messages[7].settled == ["nack"]
    assert all(m.settled == [] for m in messages if m.id != 7)   # no ack one by one
