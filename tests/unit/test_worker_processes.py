"""A handler's processes (``ProcessGroup``): what a finished child still counts."""

from __future__ import annotations

import multiprocessing.connection
import os
import time
from pathlib import Path
from typing import Any

from fastfanout.workers.handlers import make_handler
from fastfanout.workers.processes import ProcessGroup
from fastfanout.workers.stats import HandlerStats


def handle(message: Any) -> None:
    """The handler (never called: the children below only report)."""


def crash_once(endpoint: str | None, options: dict[str, Any], handler: Any,
               shutdown_timeout: float, log_level: int,
               report: multiprocessing.connection.Connection) -> None:
    """A child's main: the first one reports 3 messages in flight and crashes; the next
    one reports one processed and waits for its SIGTERM."""
    marker = Path(options["marker"])
    if not marker.exists():
        marker.touch()
        report.send(HandlerStats(handler.queue, processed=5, failed=1, retried=1,
                                 in_flight=3, extended=2))
        report.close()
        os._exit(1)   # a crash: no final report
    report.send(HandlerStats(handler.queue, processed=1))
    time.sleep(60)   # until the parent's SIGTERM kills it


def test_a_crashed_child_leaves_no_message_in_flight(tmp_path: Path) -> None:
    # its last in_flight stayed in the combined stats for ever: "3 in flight" on a
    # handler that was idle
    handler = make_handler(handle, "jobs", processes=1)
    group = ProcessGroup(handler, None, {"marker": str(tmp_path / "crashed")}, 1.0,
                         crash_once)
    group.start()
    try:
        deadline = time.monotonic() + 60
        while group.stats().processed < 6:   # the crash, the restart and its report
            assert time.monotonic() < deadline, f"no restart reported: {group.stats()}"
            time.sleep(0.05)
        stats = group.stats()
    finally:
        group.stop(1.0)
    assert group.restarts == 1
    # what the dead child had in flight is counted failed (and retried: the broker
    # redelivers it), nothing stays in flight; its other counters stay
    assert (stats.processed, stats.in_flight, stats.failed, stats.retried,
            stats.extended) == (6, 0, 4, 4, 2)
    after = group.stats()   # stopped: nothing runs
    assert (after.in_flight, after.processed, after.failed) == (0, 6, 4)
