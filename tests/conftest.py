"""Shared fixtures: a fake clock and a broker driven by it; a private state directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from clocks import FakeClock

from fastfanout import Broker


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> Path:
    """``$XDG_STATE_HOME`` under the test's temp dir, for the test and its subprocesses.

    A ``fastfanout serve`` a test starts without --data-dir or --in-memory keeps its data
    in the per-user state directory: here, never in the user's own.
    """
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    return state


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Iterator[Broker]:
    with Broker(clock=clock) as b:
        yield b
        if not b.closed:
            assert b.check()
