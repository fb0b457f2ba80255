"""Handlers for the worker tests, importable by name (worker processes, the CLI).

A message's body says what to do: ``DIRECTORY|SECONDS``: sleep that long, then leave a
file ``<pid>-<message id>`` in DIRECTORY.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from fastfanout import Worker

app = Worker(os.environ.get("WORKER_TEST_ENDPOINT"), shutdown_timeout=5.0)


def record(message: Any) -> None:
    """Sleep as the body says, then leave a file naming this process and the message."""
    directory, _, seconds = message.body.decode().partition("|")
    time.sleep(float(seconds or 0))
    Path(directory, f"{os.getpid()}-{message.id}").touch()


app.handler("jobs")(record)


def fail_at_start(*args: Any) -> None:
    """A worker process's main that fails at once (as when its broker is gone)."""
    raise SystemExit(1)


def crash(message: Any) -> None:
    """Crash the worker process in native code (a segfault)."""
    import ctypes

    ctypes.string_at(0)
