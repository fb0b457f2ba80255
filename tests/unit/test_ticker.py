"""The blocking client's background thread sleeps in ``Ticker`` until work is due (issue 15)."""

from __future__ import annotations

import threading
import time

from fastfanout._ext.offers import Ticker


def _timed_wait(ticker: Ticker, timeout: float, poll: float = -1.0) -> tuple[bool, float]:
    start = time.monotonic()
    rung = ticker.wait(timeout, poll)
    return rung, time.monotonic() - start


def test_it_wakes_at_the_earliest_deadline_of_several_sources() -> None:
    ticker = Ticker()
    now = time.monotonic()
    ticker.due(now + 0.02, "a")
    ticker.due(now + 5.0, "b")   # another source: the earliest stands
    rung, waited = _timed_wait(ticker, 5.0)
    assert not rung and 0.015 <= waited < 2.0
    assert ticker.waits == 1 and ticker.rings == 0


def test_a_sources_next_deadline_replaces_its_last() -> None:
    ticker = Ticker()
    source = object()
    now = time.monotonic()
    ticker.due(now + 0.01, source)
    ticker.due(now + 5.0, source)   # its frame left full: the next one is due later
    rung, waited = _timed_wait(ticker, 0.1)
    assert not rung and waited >= 0.09   # the timeout, not the first deadline


def test_take_forgets_the_deadlines() -> None:
    ticker = Ticker()
    ticker.due(time.monotonic() + 0.01)
    ticker.take()
    rung, waited = _timed_wait(ticker, 0.1)
    assert not rung and waited >= 0.09


def test_the_reply_poll_starts_after_the_last_use() -> None:
    ticker = Ticker()
    ticker.used()
    rung, waited = _timed_wait(ticker, 5.0, poll=0.02)
    assert not rung and 0.015 <= waited < 2.0
    rung, waited = _timed_wait(ticker, 0.05, poll=-1.0)   # no poll: the timeout
    assert waited >= 0.045


def test_a_ring_returns_at_once_and_an_earlier_deadline_wakes_a_sleeper() -> None:
    ticker = Ticker()
    ticker.ring()
    assert _timed_wait(ticker, 5.0)[0] is True
    assert ticker.rings == 1
    results: list[tuple[bool, float]] = []
    sleeper = threading.Thread(target=lambda: results.append(_timed_wait(ticker, 5.0)))
    sleeper.start()
    ticker.due(time.monotonic() + 0.02)   # earlier than its sleep: it wakes for it
    sleeper.join(3.0)
    assert not sleeper.is_alive()
    rung, waited = results[0]
    assert not rung and waited < 2.0
    ticker.take()   # as the background thread does once awake
    sleeper = threading.Thread(target=lambda: results.append(_timed_wait(ticker, 5.0)))
    sleeper.start()
    ticker.ring()
    sleeper.join(3.0)
    assert not sleeper.is_alive() and results[1][0] is True
