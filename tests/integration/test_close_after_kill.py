"""A client whose broker was killed (kill -9: no GOODBYE) learns it at once.

libzmq reconnects a lost connection in silence, and a broker's answers to the lost
connection can never come. The asyncio client's ``close()`` after its broker was
SIGKILLed waited its whole timeout (5 s) for the reply to BYE, the blocking client's
3 s (its heartbeat silence rule), and a call in flight waited as long. The DEALER's
monitor now reports the lost connection: the connection is broken at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time

import pytest
from conftest import Tracker

from fastfanout import BrokenConnection, aio
from fastfanout.client import connect

LONG = 60.0
"""The clients' timeouts here, close()'s too, and the heartbeat silence rule (1.5 times
the broker's heartbeat timeout): what the clients waited for before the fix."""
LONGEST_WAIT = 20.0
"""The longest wait a receive takes: how long a waiting call took before the fix."""
QUICK = 10.0
"""Seconds: far below LONG (a client that waits for a reply or a silence fails), and
far above what a loaded machine takes to see a lost connection."""


def _killed_broker(track: Tracker, kind: str) -> tuple[str, subprocess.Popen[bytes]]:
    """A broker process (tracked: reaped at teardown) on a new ``kind`` endpoint, whose
    clients take LONG to call it silent."""
    endpoint = track.endpoint(kind)
    config = track.tmp_path / "heartbeats.toml"
    config.write_text(f"heartbeat_interval = 1.0\nheartbeat_timeout = {LONG / 1.5}\n")
    return endpoint, track.broker_process(endpoint, "--config", str(config))


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: the broker says no GOODBYE; reaped within a deadline."""
    process.send_signal(signal.SIGKILL)
    process.wait(10.0)


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_asyncio_close_after_the_broker_was_killed_is_quick(track: Tracker, kind: str) -> None:
    endpoint, process = _killed_broker(track, kind)

    async def main() -> float:
        client = await aio.connect(endpoint, timeout=LONG, local_channel=False)
        await client.create_topic("t")
        await asyncio.to_thread(_kill, process)
        started = time.monotonic()
        await client.close(timeout=LONG)
        return time.monotonic() - started

    assert asyncio.run(main()) < QUICK


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_blocking_close_after_the_broker_was_killed_is_quick(track: Tracker, kind: str) -> None:
    endpoint, process = _killed_broker(track, kind)
    client = track.client(endpoint, local_channel=False, timeout=LONG)
    client.create_topic("t")
    _kill(process)
    started = time.monotonic()
    client.close(timeout=LONG)
    assert time.monotonic() - started < QUICK


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_a_call_waiting_when_the_broker_is_killed_fails_at_once(
        track: Tracker, kind: str) -> None:
    endpoint, process = _killed_broker(track, kind)

    async def main() -> float:
        async with aio.connect(endpoint, timeout=LONG, local_channel=False) as client:
            await client.create_queue("q")
            waiting = asyncio.create_task(client.receive("q", wait=LONGEST_WAIT))
            await asyncio.to_thread(_kill, process)
            started = time.monotonic()
            with pytest.raises(BrokenConnection, match="closed"):
                await waiting
            return time.monotonic() - started

    assert asyncio.run(main()) < QUICK


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
def test_a_blocking_call_waiting_when_the_broker_is_killed_fails_at_once(
        track: Tracker, kind: str) -> None:
    endpoint, process = _killed_broker(track, kind)
    client = track.client(endpoint, local_channel=False, timeout=LONG)
    client.create_queue("q")
    outcome: list[BaseException] = []
    failed_at: list[float] = []

    def receive() -> None:
        try:
            client.receive("q", wait=LONGEST_WAIT)
        except Exception as exc:   # checked below, in the test's thread
            failed_at.append(time.monotonic())
            outcome.append(exc)

    waiting = threading.Thread(target=receive)
    waiting.start()
    try:
        track.wait_until(lambda: bool(client.connection.core.pending),
                         what="the long poll to be sent")
        _kill(process)
        killed = time.monotonic()
    finally:
        waiting.join(QUICK)
    assert not waiting.is_alive()
    assert outcome and isinstance(outcome[0], BrokenConnection), outcome
    assert failed_at[0] - killed < QUICK


def test_close_timeout_bounds_the_flush_of_open_producers_blocking(track: Tracker) -> None:
    # until 2026-12-05 the blocking client's close(timeout=1) waited for an open
    # producer's frame as long as every call waits (the client's timeout plus the
    # broker's hold_timeout, 35 s here), then waited `timeout` again for each of the
    # goodbye's steps, against a paused broker
    endpoint = track.endpoint()
    config = track.tmp_path / "heartbeats.toml"
    config.write_text("heartbeat_interval = 1.0\nheartbeat_timeout = 40.0\n")
    process = track.broker_process(endpoint, "--config", str(config))
    client = connect(endpoint, timeout=5.0)
    try:
        client.create_topic("t")
        producer = client.producer("t", linger=60.0)
        producer.offer(b"never answered")
        os.kill(process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(BrokenConnection, match="close's timeout"):
                client.close(timeout=1.0)
            elapsed = time.monotonic() - started
            assert client.closed
        finally:
            os.kill(process.pid, signal.SIGCONT)
    finally:
        client.close()
    assert elapsed < QUICK


@pytest.mark.parametrize("kind", ["ipc", "tcp"])
@pytest.mark.parametrize("how", ["kill", "pause"])
def test_a_listener_whose_broker_is_gone_raises_broken_connection(
        track: Tracker, kind: str, how: str) -> None:
    # until 2026-12-05 a listener's read waited for ever once its broker was killed or
    # paused (a SUB socket hears nothing from a gone publisher): `for m in listener`
    # and `fastfanout sub` hung
    endpoint = track.endpoint(kind)
    config = track.tmp_path / "heartbeats.toml"
    config.write_text("heartbeat_interval = 0.5\nheartbeat_timeout = 2.0\n")
    process = track.broker_process(endpoint, "--config", str(config))
    client = track.client(endpoint, local_channel=False, timeout=LONG)
    client.create_topic("t")
    listener = client.listen("t")
    track.closeables.append(listener)
    client.publish("t", b"before")
    batch = listener.recv_batch(timeout=LONGEST_WAIT)
    assert batch is not None and [m.body for m in batch] == [b"before"]
    if how == "kill":
        _kill(process)
    else:
        os.kill(process.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(BrokenConnection, match="listen again"):
            listener.recv_batch(timeout=LONG)
        assert time.monotonic() - started < QUICK
        assert listener.closed
    finally:
        if how == "pause":
            os.kill(process.pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["kill", "pause"])
def test_an_asyncio_listener_whose_broker_is_gone_raises_broken_connection(
        track: Tracker, how: str) -> None:
    # until 2026-12-05 `async for message in listener` waited for ever once its broker
    # was killed or paused
    endpoint = track.endpoint()
    config = track.tmp_path / "heartbeats.toml"
    config.write_text("heartbeat_interval = 0.5\nheartbeat_timeout = 2.0\n")
    process = track.broker_process(endpoint, "--config", str(config))

    async def main() -> float:
        client = await aio.connect(endpoint, timeout=LONG, local_channel=False)
        try:
            await client.create_topic("t")
            async with client.listen("t") as listener:
                await client.publish("t", b"before")
                batch = await listener.recv_batch(timeout=LONGEST_WAIT)
                assert batch is not None and [m.body for m in batch] == [b"before"]
                if how == "kill":
                    await asyncio.to_thread(_kill, process)
                else:
                    os.kill(process.pid, signal.SIGSTOP)
                started = time.monotonic()
                with pytest.raises(BrokenConnection, match="listen again"):
                    async for _ in listener:
                        pass
                assert listener.closed
                return time.monotonic() - started
        finally:
            if how == "pause":
                os.kill(process.pid, signal.SIGCONT)
            await client.close(timeout=1.0)

    assert asyncio.run(main()) < QUICK
