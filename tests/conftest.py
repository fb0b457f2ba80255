"""Shared fixtures: a fake clock and a broker driven by it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from clocks import FakeClock

from fastfanout import Broker


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Iterator[Broker]:
    with Broker(clock=clock) as b:
        yield b
        if not b.closed:
            assert b.check()
