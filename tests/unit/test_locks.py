"""FastRLock (issue 15): an RLock with the same face, cheap when uncontended."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fastfanout._ext.locks import FastRLock

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


def test_a_condition_waits_and_notifies_on_it() -> None:
    lock = FastRLock()
    condition = threading.Condition(lock)   # type: ignore[arg-type]
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
