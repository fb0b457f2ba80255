"""Endpoint lock files: a killed broker's is removed at the next start, a held one never.

A tcp endpoint's lock file lives in the runtime directory; a broker killed with ``kill -9``
leaves it there. ``fastfanout serve`` removes the ones nobody holds when it starts, and
a broker removes its own at a clean stop; two brokers still never hold one endpoint.
"""

from __future__ import annotations

import fcntl
import os
import signal
from pathlib import Path
from typing import Any as Tracker

import pytest
from conftest import DEADLINE, free_tcp_endpoint

from fastfanout.errors import BrokerRunning
from fastfanout.runtime import EndpointLock, remove_stale_locks, runtime_dir


@pytest.fixture
def run_dir(short_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime directory of the test's own (brokers it starts inherit it)."""
    base = short_dir / "run"
    base.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    return runtime_dir()


def _locks(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.suffix == ".lock")


def test_a_killed_brokers_lock_file_is_removed_at_the_next_start(
        track: Tracker, run_dir: Path) -> None:
    killed = track.broker_process(free_tcp_endpoint())
    assert len(_locks(run_dir)) == 1
    stale = _locks(run_dir)
    killed.send_signal(signal.SIGKILL)
    killed.wait(DEADLINE)
    assert _locks(run_dir) == stale                     # left behind by the kill
    endpoint = free_tcp_endpoint()
    broker = track.broker_process(endpoint)             # another endpoint's broker:
    # answering means it started, so it has swept
    mine = _locks(run_dir)
    assert len(mine) == 1 and mine != stale             # its own only
    # its own lock is held: a second broker of that endpoint is refused, file kept
    second = track.process(["-m", "fastfanout", "serve", "--endpoint", endpoint,
                            "--in-memory", "--log-level", "WARNING"])
    assert second.wait(DEADLINE) != 0
    assert second.stderr is not None and b"already serves" in second.stderr.read()
    assert _locks(run_dir) == mine
    broker.terminate()                                  # a clean stop removes its own
    assert broker.wait(DEADLINE) == 0
    assert _locks(run_dir) == []


def test_a_held_lock_file_is_never_removed(run_dir: Path) -> None:
    endpoint = free_tcp_endpoint()
    held = EndpointLock(endpoint)
    held.acquire()
    try:
        (run_dir / "stale.lock").write_text("12345\n")   # nobody holds this one
        assert remove_stale_locks() == ["stale.lock"]
        assert _locks(run_dir) == [held.path.name]
        with pytest.raises(BrokerRunning, match=f"pid {os.getpid()}"):
            EndpointLock(endpoint).acquire()
    finally:
        held.release()
    assert _locks(run_dir) == []
    assert remove_stale_locks() == []


def test_a_lock_taken_on_a_file_removed_meanwhile_is_taken_anew(
        run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The file is unlinked (by the holder that released it, or a sweep) between the
    taker's open and its flock: the taker must not end up holding the unlinked file,
    which would let the next broker lock a new file of that name."""
    endpoint = free_tcp_endpoint()
    lock = EndpointLock(endpoint)
    lock.path.write_text("12345\n")      # a killed broker's file
    real_flock = fcntl.flock
    calls: list[int] = []

    def flock_after_removal(fd: int, operation: int) -> None:
        if not calls:
            os.unlink(lock.path)          # removed between the open and the lock
        calls.append(fd)
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", flock_after_removal)
    lock.acquire()
    monkeypatch.setattr(fcntl, "flock", real_flock)
    try:
        assert len(calls) == 2                           # locked again, a new file
        with pytest.raises(BrokerRunning):
            EndpointLock(endpoint).acquire()             # held: nobody else gets it
        assert remove_stale_locks() == []                # nor removes it
    finally:
        lock.release()
    assert _locks(run_dir) == []
