"""Shared fixtures: a fake clock and a broker driven by it; a private state directory."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from clocks import FakeClock

from fastfanout import Broker

# A shell without job control starts a background job (`bash -c 'pytest ... &'`, some CI
# runners) with SIGINT ignored, and an ignored signal stays ignored across exec: every
# command line a test starts would then ignore the Ctrl-C the test sends it, as the shell
# meant. The tests of Ctrl-C need it delivered: the run takes Python's usual handler,
# which its children's exec resets to the default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
def short_dir() -> Iterator[Path]:
    """A private directory with a short path (``/tmp/ff-XXXXXXXX``, mode 0700), removed
    after the test: for sockets. An ``ipc://`` path holds at most 107 bytes, and one
    under pytest's ``tmp_path`` (``.../pytest-of-USER/pytest-N/popen-gwN/TEST0/...``)
    plus a broker's ``.stream`` suffix came within 5 of it: a longer user name, a
    two-digit run number or a ``TMPDIR`` of a few more characters failed the bind."""
    directory = Path(tempfile.mkdtemp(prefix="ff-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker(clock: FakeClock) -> Iterator[Broker]:
    with Broker(clock=clock) as b:
        yield b
        if not b.closed:
            assert b.check()
