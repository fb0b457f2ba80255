"""SIGTERM handled as Ctrl-C by the commands that start other processes.

Python's default for SIGTERM ends the process at once, without ``finally`` blocks or
context exits: a command that started a broker, child processes or temporary
directories (the demo, a benchmark, ``fastfanout sub``) would leave them running or
behind, orphaned. Inside ``sigterm_as_interrupt()`` a SIGTERM raises
``KeyboardInterrupt`` where the main thread is, so the command cleans up exactly as it
does on Ctrl-C.

Invariants:

- Only the main thread can set a signal handler; elsewhere the context does nothing.
- The previous handler is restored on exit, however the block ends.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["sigterm_as_interrupt"]


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, a SIGTERM raises ``KeyboardInterrupt`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
