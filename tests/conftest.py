"""Shared fixtures: a fake clock and a broker driven by it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fastfanout import Broker


class FakeClock:
    """A clock that moves only when told to (seconds)."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Iterator[Broker]:
    with Broker(clock=clock) as b:
        yield b
        if not b.closed:
            assert b.check()
