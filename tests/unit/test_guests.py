"""SteppedLoop: an asyncio loop run by its host's loop, step by step, never waiting."""

from __future__ import annotations

import asyncio
import select
import socket

from fastfanout.server.guests import STEP_ITERATIONS, SteppedLoop


def test_a_step_runs_a_chain_of_callbacks_without_waiting() -> None:
    loop = SteppedLoop()
    trail: list[int] = []

    async def chain() -> str:
        for index in range(STEP_ITERATIONS // 4):
            await asyncio.sleep(0)     # each one resumes in the loop's next iteration
            trail.append(index)
        return "done"

    task = loop.create_task(chain())
    assert loop.timeout() == 0.0       # its first step is scheduled: step now
    loop.step()
    assert task.done() and task.result() == "done"
    assert trail == list(range(STEP_ITERATIONS // 4))
    assert loop.timeout() is None      # nothing waits: no reason to wake
    loop.close()


def test_a_chain_longer_than_a_step_asks_for_the_next_one_at_once() -> None:
    loop = SteppedLoop()

    async def busy() -> None:
        for _ in range(STEP_ITERATIONS * 3):
            await asyncio.sleep(0)

    task = loop.create_task(busy())
    loop.step()
    assert not task.done() and loop.timeout() == 0.0   # the host does not sleep
    steps = 1
    while not task.done():
        loop.step()
        steps += 1
    assert steps >= 3
    loop.close()


def test_the_next_timer_bounds_the_hosts_wait() -> None:
    loop = SteppedLoop()
    fired: list[str] = []
    handle = loop.call_later(30.0, fired.append, "late")
    loop.call_later(0.0, fired.append, "now")
    timeout = loop.timeout()
    assert timeout == 0.0                     # one is due already
    loop.step()
    assert fired == ["now"]
    timeout = loop.timeout()
    assert timeout is not None and 29.0 < timeout <= 30.0
    handle.cancel()
    assert loop.timeout() is None             # a cancelled timer wakes nobody
    loop.close()


def test_its_descriptor_is_readable_when_a_watched_one_is() -> None:
    loop = SteppedLoop()
    left, right = socket.socketpair()
    heard: list[bytes] = []
    loop.add_reader(left.fileno(), lambda: heard.append(left.recv(64)))
    try:
        assert select.select([loop.fileno()], [], [], 0)[0] == []
        right.send(b"ping")
        assert select.select([loop.fileno()], [], [], 5.0)[0] == [loop.fileno()]
        loop.step()
        assert heard == [b"ping"]
        assert select.select([loop.fileno()], [], [], 0)[0] == []
    finally:
        loop.remove_reader(left.fileno())
        left.close()
        right.close()
        loop.close()


def test_a_callback_from_another_thread_wakes_the_host() -> None:
    import threading

    loop = SteppedLoop()
    loop.step()                        # drain the self-pipe of the loop's creation
    seen = threading.Event()
    thread = threading.Thread(target=loop.call_soon_threadsafe, args=(seen.set,))
    thread.start()
    thread.join(5.0)
    assert select.select([loop.fileno()], [], [], 5.0)[0] == [loop.fileno()]
    loop.step()
    assert seen.is_set()
    loop.close()


def test_cancelled_timeouts_are_not_kept_until_their_time() -> None:
    import gc
    import weakref

    from fastfanout.server.guests import TIMERS_COMPACT_MIN

    loop = SteppedLoop()
    cancelled = []
    for _ in range(TIMERS_COMPACT_MIN * 4):     # a deadline per request, each met
        handle = loop.call_later(30.0, print)
        handle.cancel()
        cancelled.append(weakref.ref(handle))
        del handle
    live = loop.call_later(20.0, print)
    loop.call_soon(int)                           # an iteration to run:
    loop.step()                                   # asyncio drops its own cancelled ones
    gc.collect()
    kept = sum(ref() is not None for ref in cancelled)
    assert kept <= TIMERS_COMPACT_MIN * 2, kept
    timeout = loop.timeout()
    assert timeout is not None and 19.0 < timeout <= 20.0   # the live one still counts
    live.cancel()
    loop.close()
