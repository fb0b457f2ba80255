"""A client used across fork(): the child gets ``UsedAfterFork``, the parent carries on.

Each test forks with ``os.fork()``; the child reports what its calls raised through a
pipe and leaves with ``os._exit`` (never returning into pytest); the parent waits for it
with a deadline and kills it past that (a hang is a failure, not a stuck run).
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any as Tracker

import pytest

import fastfanout.aio as aio
from fastfanout import FastFanoutError, UsedAfterFork

DEADLINE = 10.0


def in_child(run: Callable[[], list[str]]) -> list[str]:
    """Fork; the child runs ``run`` and sends back its lines; returns them (parent)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # fork of a threaded process
        pid = os.fork()
    if pid == 0:   # the child: whatever happens, never return into pytest
        status = 1
        try:
            os.close(read_end)
            lines = run()
            os.write(write_end, "\n".join(lines).encode())
            status = 0
        except BaseException as exc:
            os.write(write_end, f"child failed: {exc!r}".encode())
        finally:
            os._exit(status)
    os.close(write_end)
    deadline = time.monotonic() + DEADLINE
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            os.close(read_end)
            pytest.fail(f"the forked child hung for {DEADLINE} s")
        time.sleep(0.01)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report.splitlines()


def outcome(call: Callable[[], object]) -> str:
    try:
        call()
    except UsedAfterFork as exc:
        return f"UsedAfterFork: {exc}"
    except FastFanoutError as exc:
        return f"other error {exc!r}"
    return "no error"


@pytest.mark.parametrize("local_channel", [False, None], ids=["socket", "local"])
def test_a_forked_child_gets_used_after_fork(track: Tracker, local_channel: bool | None
                                             ) -> None:
    server = track.server()
    client = track.client(server.endpoint, local_channel=local_channel)
    client.create_queue("q")
    client.send("q", b"before")
    # a parent thread holds the client lock (pumping a long poll) while the fork happens
    client.create_queue("q2")
    polling = threading.Thread(target=lambda: client.receive("q2", wait=1.0))
    polling.start()
    parent = os.getpid()

    def child() -> list[str]:
        return [outcome(client.list_queues),
                outcome(lambda: client.publish_nowait("q", b"x")),
                outcome(lambda: client.receive("q")),
                outcome(client.close),
                outcome(client.list_queues)]

    lines = in_child(child)
    polling.join(DEADLINE)
    assert lines[0].startswith("UsedAfterFork") and f"process {parent}" in lines[0], lines
    assert lines[1].startswith("UsedAfterFork") and lines[2].startswith("UsedAfterFork")
    assert lines[3] == "no error"   # close() in the child: nothing of the parent's closed
    assert lines[4].startswith("UsedAfterFork")
    # the parent's connection is whole
    assert client.list_queues() == ["q", "q2"]
    client.send("q", b"after")
    assert sorted(m.body for m in client.receive("q", max_messages=10)) == [b"after", b"before"]
    assert server.counters["sessions"] == 1


@pytest.mark.parametrize("local_channel", [False, None], ids=["socket", "local"])
def test_a_batch_pending_at_the_fork_is_sent_once(track: Tracker, local_channel: bool | None
                                                  ) -> None:
    """The child's wait on a future it inherited flushed the parent's open batch into the
    local channel's ring, which the parent shares with the broker: the parent's own
    flush sent it again (two messages)."""
    server = track.server()
    client = track.client(server.endpoint, local_channel=local_channel)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    future = client.publish_nowait("t", b"pending")   # in the open batch (linger)

    def child() -> list[str]:
        return [outcome(lambda: future.result(timeout=2)), outcome(client.flush)]

    lines = in_child(child)
    assert all(line.startswith("UsedAfterFork") for line in lines), lines
    assert future.result(timeout=DEADLINE).deliveries == 1
    got = client.receive("q", max_messages=10, wait=0.5)
    assert [m.body for m in got] == [b"pending"]
    assert client.receive("q", max_messages=10, wait=0.2) == []


@pytest.mark.parametrize("local_channel", [False, None], ids=["socket", "local"])
def test_a_forked_child_of_an_asyncio_client(track: Tracker, local_channel: bool | None
                                             ) -> None:
    server = track.server()

    def drive(coroutine: object) -> None:
        # the child's first step of a call: it raises (or ends) before anything is sent
        try:
            coroutine.send(None)  # type: ignore[attr-defined]
        except StopIteration:
            return
        raise AssertionError("the call waited for an answer in the forked child")

    async def main() -> list[str]:
        async with aio.connect(server.endpoint, local_channel=local_channel) as client:
            await client.create_queue("q")

            def child() -> list[str]:
                return [outcome(lambda: drive(client.list_queues())),
                        outcome(lambda: client.publish_nowait("q", b"x")),
                        outcome(lambda: drive(client.close()))]

            lines = in_child(child)
            assert await client.list_queues() == ["q"]
            await client.send("q", b"after")
            assert [m.body for m in await client.receive("q")] == [b"after"]
            return lines

    lines = asyncio.run(main())
    assert lines[0].startswith("UsedAfterFork") and lines[1].startswith("UsedAfterFork")
    assert lines[2] == "no error", lines
