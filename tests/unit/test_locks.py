"""FastRLock (issue 15): an RLock with the same face, cheap when uncontended; and
FastCondition, threading.Condition over it, waiting and notifying in C."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from fastfanout._ext.locks import FastCondition, FastRLock

DEADLINE = 10.0


def free_for_others(lock: FastRLock) -> bool:
    """Whether another thread could take ``lock`` now (it gives it back at once)."""
    got: list[bool] = []

    def other() -> None:
        got.append(lock.acquire(False))
        if got[0]:
            lock.release()

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(DEADLINE)
    return got[0]


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch threads every microsecond: contention on every critical section."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def test_it_is_reentrant_and_owned_by_one_thread() -> None:
    lock = FastRLock()
    assert free_for_others(lock)
    with lock:
        assert lock.acquire() and not free_for_others(lock)
        lock.release()
        assert not free_for_others(lock)   # still held once
    assert free_for_others(lock)
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(ValueError):
        lock.acquire(False, 1.0)
    with pytest.raises(ValueError):
        lock.acquire(timeout=-2)


def test_another_thread_waits_or_times_out() -> None:
    lock = FastRLock()
    lock.acquire()
    outcome: list[object] = []

    def other() -> None:
        outcome.append(lock.acquire(False))
        started = time.monotonic()
        outcome.append(lock.acquire(timeout=0.05))
        outcome.append(time.monotonic() - started >= 0.04)
        try:
            lock.release()   # not its own
        except RuntimeError:
            outcome.append("refused")
        outcome.append(lock.acquire(timeout=DEADLINE))   # once the owner lets go
        lock.release()

    thread = threading.Thread(target=other)
    thread.start()
    deadline = time.monotonic() + DEADLINE
    while len(outcome) < 4:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    assert outcome == [False, False, True, "refused"]
    lock.release()
    thread.join(DEADLINE)
    assert outcome[4] is True and free_for_others(lock)


def test_it_excludes_under_contention(fast_switching: None) -> None:
    lock = FastRLock()
    inside = [0]
    total = [0]
    broken: list[int] = []

    def work() -> None:
        for _ in range(3000):
            with lock:
                with lock:   # reentrant while others wait
                    inside[0] += 1
                    if inside[0] != 1:
                        broken.append(inside[0])
                    total[0] += 1
                    inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    assert broken == [] and total[0] == 12000
    assert lock.acquire(False)   # free at the end, the real lock released
    lock.release()


@pytest.mark.parametrize("make_condition", [
    lambda lock: threading.Condition(lock), FastCondition], ids=["threading", "fast"])
def test_a_condition_waits_and_notifies_on_it(
        make_condition: Callable[[FastRLock], threading.Condition]) -> None:
    lock = FastRLock()
    condition = make_condition(lock)
    ready: list[int] = []
    entered = threading.Event()
    seen: list[object] = []

    def waiter() -> None:
        try:
            with condition:
                with lock:   # held twice while waiting: the wait lets go of both
                    entered.set()
                    seen.append(bool(condition.wait_for(lambda: ready, timeout=DEADLINE)))
                seen.append(free_for_others(lock))   # still held once: depth restored
        except BaseException as error:
            seen.append(error)

    thread = threading.Thread(target=waiter)
    thread.start()
    assert entered.wait(DEADLINE)
    with condition:   # had only once the waiter waits (it held the lock till then)
        ready.append(1)
        condition.notify_all()
    thread.join(DEADLINE)
    assert not thread.is_alive() and seen == [True, False]
    assert free_for_others(lock)
    with pytest.raises(RuntimeError):
        condition.notify()   # not held


# -- FastCondition ------------------------------------------------------------------------


def _until(predicate: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_fast_condition_times_out_holding_its_lock_at_the_same_depth() -> None:
    lock = FastRLock()
    condition = FastCondition(lock)
    with condition, lock:
        started = time.monotonic()
        assert condition.wait(0.02) is False
        assert time.monotonic() - started >= 0.015
        assert condition.wait(0) is False and condition.wait(-1) is False
        assert not free_for_others(lock)
        lock.release()
        assert not free_for_others(lock)   # held twice: once is left
        lock.acquire()
    assert free_for_others(lock)
    assert (condition.waiting, condition.sleeping, condition.waits) == (0, 0, 3)


def test_a_fast_condition_wakes_its_oldest_waiters_first_and_counts_them() -> None:
    lock = FastRLock()
    condition = FastCondition(lock)
    woken: list[int] = []

    def waiter(index: int) -> None:
        with condition:
            assert condition.wait(DEADLINE)
            woken.append(index)

    threads = []
    for index in range(3):   # each parked before the next starts: a known order
        threads.append(threading.Thread(target=waiter, args=(index,)))
        threads[-1].start()
        _until(lambda count=index + 1: condition.sleeping == count)
    with condition:
        assert (condition.waiting, condition.waits) == (3, 3)
        condition.notify()
        assert condition.waiting == 2   # off the count at once, before it runs
        condition.notify(0)
        assert condition.waiting == 2
    _until(lambda: woken == [0])
    with condition:
        condition.notify_all()
        assert condition.waiting == 0
        condition.notify_all()          # nobody waits: nothing happens
    for thread in threads:
        thread.join(DEADLINE)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(woken) == [0, 1, 2] and woken[0] == 0
    assert (condition.waiting, condition.sleeping, condition.waits) == (0, 0, 3)


def test_a_fast_condition_refuses_callers_without_its_lock() -> None:
    lock = FastRLock()
    condition = FastCondition(lock)
    for call in (condition.notify, condition.notify_all, lambda: condition.wait(0.01)):
        with pytest.raises(RuntimeError):
            call()
    assert condition.waits == 0
    with pytest.raises(TypeError):
        FastCondition(threading.RLock())   # type: ignore[arg-type]
    assert condition.acquire() and not free_for_others(lock)
    condition.release()
    assert free_for_others(lock)


def test_a_fast_condition_wait_for_gives_the_predicates_last_value() -> None:
    lock = FastRLock()
    condition = FastCondition(lock)
    calls: list[int] = []
    with condition:
        assert condition.wait_for(lambda: "ready") == "ready"
        started = time.monotonic()
        assert condition.wait_for(lambda: calls.append(1) or 0, timeout=0.02) == 0
        assert time.monotonic() - started >= 0.015 and len(calls) >= 2


class _Interrupted(Exception):
    pass


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signals reach the main thread only")
def test_a_signal_handlers_exception_ends_a_wait_with_the_lock_held_again() -> None:
    lock = FastRLock()
    condition = FastCondition(lock)

    def interrupt(signum: int, frame: object) -> None:
        raise _Interrupted()

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with condition, lock:
            signal.setitimer(signal.ITIMER_REAL, 0.02)
            started = time.monotonic()
            with pytest.raises(_Interrupted):
                condition.wait(DEADLINE)
            assert time.monotonic() - started < DEADLINE / 2   # ended by the handler
            assert not free_for_others(lock)
            assert (condition.waiting, condition.sleeping) == (0, 0)
            lock.release()
            assert not free_for_others(lock)   # the depth was restored
            lock.acquire()
        assert free_for_others(lock)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
