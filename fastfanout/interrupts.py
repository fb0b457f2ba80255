"""The stop signals (SIGTERM, SIGINT, SIGHUP) of the command line and its commands.

Python's default for SIGTERM and SIGHUP ends the process at once, without ``finally``
blocks or context exits: a command that started a broker, child processes or temporary
directories (the demo, a benchmark, ``fastfanout sub``) would leave them running or
behind, orphaned, and a client command (``fastfanout receive --wait``) ended with 143
and its connection unclosed. Three tools:

- ``sigterm_as_interrupt()``: within the block, a SIGTERM or SIGHUP raises
  ``KeyboardInterrupt`` where the main thread is, so the command cleans up exactly as it
  does on Ctrl-C (the previous handlers come back after it);
- ``hold_stop_signals()`` / ``release_stop_signals()``: the ``fastfanout`` command
  (``fastfanout.entry``) blocks the three signals on its first line, before any heavy
  import, so that one sent while it starts waits, pending, until the command can act on
  it: ``fastfanout serve`` once its server handles them (``fastfanout.server.loop.serve``
  unblocks them), every other command once it is chosen (``release_stop_signals``: from
  then on SIGTERM and SIGHUP raise ``KeyboardInterrupt``, as SIGINT does).

- ``start_process(process)``: starts a ``multiprocessing`` child with the stop signals
  deferred until its start is whole (``stop_signals_deferred()``): a spawn child first
  reads what it needs down a pipe from its parent, and a Ctrl-C or SIGTERM that cut the
  parent's ``start()`` short left the child to print ``EOFError: Ran out of input`` with
  a traceback on the user's terminal.

Invariants:

- Only the main thread can set a signal handler; elsewhere they do nothing.
- ``sigterm_as_interrupt`` restores the previous handlers on exit, however the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:   # not imported at run time: the command imports this module first
    from multiprocessing.process import BaseProcess

__all__ = ["STOP_SIGNALS", "hold_stop_signals", "release_stop_signals",
           "resource_tracker_deaf_to_hangups", "sigterm_as_interrupt", "start_process",
           "stop_signals_deferred", "stop_signals_held"]

STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
"""The signals that stop a command (a service manager, Ctrl-C, the terminal closing)."""

_held = False


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, a SIGTERM or SIGHUP raises ``KeyboardInterrupt`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def stop_signals_deferred() -> Iterator[None]:
    """Within the block, a stop signal waits; it is handled as the block ends (main thread).

    Each of SIGTERM, SIGINT and SIGHUP that comes meanwhile is noted (by a Python handler,
    which, unlike a blocked signal mask, a child process does not inherit) and raised
    again after the previous handlers are back, each kind once, in the order they came
    (a handler that raises, as ``KeyboardInterrupt``'s does, ends the rest): the program
    then acts on it as it would have, a moment later. Keep the block short. Elsewhere
    than in the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def note(signum: int, frame: Any) -> None:
        caught.append(signum)

    previous: dict[signal.Signals, Any] = {}
    for sig in STOP_SIGNALS:
        if signal.getsignal(sig) is not None:   # None: set outside Python, left alone
            previous[sig] = signal.signal(sig, note)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def start_process(process: BaseProcess) -> None:
    """``process.start()`` (a ``multiprocessing`` process) with stop signals deferred.

    A stop signal that comes while the child is being started is handled once it has
    started whole, so the caller's clean-up stops it as any other child, and the child
    never dies half-started reading its parent's pipe (with a traceback to the terminal).
    """
    with stop_signals_deferred():
        process.start()


def resource_tracker_deaf_to_hangups() -> None:
    """Start ``multiprocessing``'s resource tracker now, ignoring SIGHUP, if it is not running.

    A command whose ``spawn`` children make it start (the demo, ``fastfanout worker``)
    stops cleanly on SIGHUP, the terminal closing; but the tracker, in the same process
    group, got the SIGHUP too and died of it (it ignores only SIGINT and SIGTERM), and
    the one relaunched in its place printed a traceback per resource it did not know.
    Started with SIGHUP ignored (a disposition kept across exec), it outlives the
    hang-up as it does the other two. Main thread only; elsewhere it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    from multiprocessing import resource_tracker

    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        resource_tracker.ensure_running()
    finally:
        signal.signal(signal.SIGHUP, previous)


def hold_stop_signals() -> None:
    """Block the stop signals in this (the main) thread: a command's very first step.

    One that comes meanwhile waits, pending, for ``release_stop_signals`` or for the
    server's own handlers.
    """
    global _held
    if threading.current_thread() is threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        _held = True


def stop_signals_held() -> bool:
    """True once ``hold_stop_signals`` blocked them (and no release followed)."""
    return _held


def release_stop_signals() -> None:
    """For the rest of the process, SIGTERM and SIGHUP raise ``KeyboardInterrupt``; unblock.

    SIGINT keeps its handler (``KeyboardInterrupt`` too, unless a program changed it). A
    signal held since ``hold_stop_signals`` is handled as the call returns.
    """
    global _held
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    _held = False
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
