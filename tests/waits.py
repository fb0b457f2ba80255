"""Waiting in tests for a state another thread reaches (a deadline poll, not a sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PARK_DEADLINE = 10.0
"""Seconds a test waits for a receiver to park before it fails."""


def wait_until_parked(broker: Any, receivers: int = 1) -> None:
    """Return once ``broker`` has ``receivers`` receivers parked waiting for a message.

    Fails the test (``AssertionError``) when they are not parked within PARK_DEADLINE.
    """
    deadline = time.monotonic() + PARK_DEADLINE
    while broker.waiting_receivers < receivers:
        assert time.monotonic() < deadline, "the receiver never parked"
        time.sleep(0.001)


def wait_until(predicate: Callable[[], object], timeout: float = 10.0,
               what: str = "condition") -> None:
    """Return once ``predicate()`` is true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.001)
