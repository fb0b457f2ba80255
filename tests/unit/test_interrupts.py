"""Stop signals deferred while a child process starts (fastfanout.interrupts)."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from fastfanout.interrupts import sigterm_as_interrupt, start_process, stop_signals_deferred

PAYLOAD = 64 << 20   # bytes a child is started with: its parent writes them for a while


def _child(payload: bytes) -> None:
    assert len(payload) == PAYLOAD


def _children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        pids += [int(pid) for pid in (task / "children").read_text().split()]
    return pids


def test_a_stop_signal_in_the_block_waits_for_its_end() -> None:
    went_on = False
    with sigterm_as_interrupt():
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            with stop_signals_deferred():
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGINT)
                went_on = True
        assert went_on
        assert signal.getsignal(signal.SIGTERM) is handler
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_block_without_a_signal_changes_nothing() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    with stop_signals_deferred():
        pass
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_signal_ignored_before_stays_ignored_and_is_not_raised_again() -> None:
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with stop_signals_deferred():
            signal.raise_signal(signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN   # and we are alive
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_outside_the_main_thread_the_block_touches_no_handler() -> None:
    seen: list[object] = []

    def run() -> None:
        with stop_signals_deferred():
            seen.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert seen == [signal.default_int_handler]


def test_a_sigterm_while_a_child_starts_leaves_it_whole() -> None:
    """A SIGTERM that came while ``start()`` wrote a spawn child's arguments down its pipe
    raised in the middle: the child read half of them and died with a traceback
    (``EOFError: Ran out of input``), and nothing could stop or reap it."""
    process = multiprocessing.get_context("spawn").Process(
        target=_child, args=(bytes(PAYLOAD),))
    starting: list[bool] = []

    def fire() -> None:   # as soon as the child exists, its parent is still writing
        deadline = time.monotonic() + 60
        while not _children() and time.monotonic() < deadline:
            time.sleep(0.001)
        starting.append(process.pid is None)   # the pid is known once start() is done
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=fire)
    with sigterm_as_interrupt():
        killer.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                start_process(process)
                killer.join(60)
                time.sleep(60)   # not reached: the signal raises at once
        finally:
            killer.join(60)
    assert starting == [True], "the signal came after the start: the test proves nothing"
    assert process.pid is not None
    process.join(30)
    assert process.exitcode == 0
