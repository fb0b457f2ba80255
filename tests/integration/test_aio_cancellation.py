"""The asyncio client under cancellation, timeouts, stalled brokers and forgotten closes.

Real users wrap calls in ``asyncio.wait_for`` and ``asyncio.timeout``, cancel tasks at
any await, and forget ``close()``. Each test here is a way that went wrong: the error
a call raised was not the library's own, a cancelled call left the next one hanging,
or the process hung.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
import threading
import time
from typing import Any

import pytest
from conftest import Tracker

import fastfanout
from fastfanout import aio

QUICK = 20.0
"""Seconds: far beyond what each step takes on a loaded machine, far below a hang."""

_UNCLOSED_CLIENT = textwrap.dedent("""
    import asyncio, gc, sys
    from fastfanout import aio

    async def main():
        client = await aio.connect(sys.argv[1], timeout=10.0,
                                   local_channel=sys.argv[2] == "local")
        await client.create_queue("q")
        await client.send("q", b"x")
        async for message in client.consume("q"):
            break
        # no close(): the client is garbage once the loop has ended

    asyncio.run(main())
    gc.collect()
    print("collected", flush=True)
""")


@pytest.mark.parametrize("channel", ["local", "socket"])
def test_an_asyncio_client_never_closed_is_collected_without_a_hang(
        track: Tracker, channel: str) -> None:
    # until 2026-12-05 the garbage collector hung the process for ever: it ended the
    # client's zmq context before closing its sockets (a reference cycle)
    server = track.server()
    process = track.process(["-c", _UNCLOSED_CLIENT, server.endpoint, channel])
    try:
        out, err = process.communicate(timeout=QUICK)
    except subprocess.TimeoutExpired:
        pytest.fail("the process hung collecting an unclosed asyncio client")
    assert process.returncode == 0, err.decode()
    assert out == b"collected\n"


def _stopped_broker(track: Tracker) -> tuple[str, subprocess.Popen[bytes]]:
    """A broker process on a new ipc endpoint, to be paused (SIGSTOP) by the test.

    Its clients take 60 s of silence (1.5 times its heartbeat timeout) to call it gone,
    so what a test measures is the client's own deadline, not that rule.
    """
    endpoint = track.endpoint()
    config = track.tmp_path / "heartbeats.toml"
    config.write_text("heartbeat_interval = 1.0\nheartbeat_timeout = 40.0\n")
    return endpoint, track.broker_process(endpoint, "--config", str(config))


def test_a_consume_the_broker_does_not_answer_raises_broken_connection(
        track: Tracker) -> None:
    # until 2026-12-05 the iteration raised asyncio's bare TimeoutError (its own
    # wait_for beat the client's deadline), not the BrokenConnection of every other call
    endpoint, process = _stopped_broker(track)

    async def main() -> float:
        async with aio.connect(endpoint, timeout=1.0) as client:
            await client.create_queue("q")
            os.kill(process.pid, signal.SIGSTOP)
            try:
                started = time.monotonic()
                with pytest.raises(fastfanout.BrokenConnection):
                    async for _ in client.consume("q"):
                        pass
                with pytest.raises(fastfanout.BrokenConnection):
                    async for _ in client.consume_batches("q"):
                        pass
                return time.monotonic() - started
            finally:
                os.kill(process.pid, signal.SIGCONT)

    assert asyncio.run(main()) < QUICK


def test_a_message_settled_from_another_thread_is_refused_and_stays_settleable(
        track: Tracker) -> None:
    # until 2026-12-05 the first such ack raised WrongEventLoop with its receipt left
    # queued and no send scheduled (the loop's own acks then stayed unsent), the message
    # counted settled; later foreign acks were queued unchecked, racing the loop
    server = track.server()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=60.0)
            for n in range(4):
                await client.send("q", b"m%d" % n)
            first, second, third, fourth = await client.receive("q", max_messages=4)
            refused: list[BaseException] = []

            def from_a_thread(*calls: Any) -> None:
                def run() -> None:
                    for call in calls:
                        try:
                            call()
                        except fastfanout.WrongEventLoop as exc:
                            refused.append(exc)
                thread = threading.Thread(target=run)
                thread.start()
                thread.join(10.0)
                assert not thread.is_alive()

            from_a_thread(first.ack)                   # into an empty buffer
            second.ack()                               # the loop's own ack
            from_a_thread(third.ack, fourth.term, fourth.nack)   # behind it
            assert len(refused) == 4
            for message in (first, third, fourth):
                message.ack()                          # still theirs to settle
            deadline = loop.time() + QUICK
            while (queue := (await client.stats()).queues["q"]).acked < 4:
                assert loop.time() < deadline, queue
                await asyncio.sleep(0.01)
            assert (queue.leased, queue.visible, queue.dead_lettered) == (0, 0, 0)

    asyncio.run(main())


@pytest.mark.parametrize("settle", ["ack", "nack", "term", "message ack"])
def test_a_batch_settled_from_another_thread_is_refused_and_stays_settleable(
        track: Tracker, settle: str) -> None:
    # until 2026-12-05 the batch (or its message) was marked settled before the loop was
    # checked: the refused call left every later ack(), nack() or term() of it doing
    # nothing for what it had marked
    server = track.server()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=60.0)
            await client.send_batch("q", [b"a", b"b", b"c"])
            batches = client.consume_batches("q", prefetch=10)
            batch = await batches.__anext__()
            assert len(batch) == 3
            refused: list[BaseException] = []

            def run() -> None:
                try:
                    if settle == "message ack":
                        batch[0].ack()
                    else:
                        getattr(batch, settle)()
                except fastfanout.WrongEventLoop as exc:
                    refused.append(exc)

            thread = threading.Thread(target=run)
            thread.start()
            thread.join(10.0)
            assert not thread.is_alive() and len(refused) == 1
            batch.ack()                                # still the loop's to settle
            deadline = loop.time() + QUICK
            while (queue := (await client.stats()).queues["q"]).acked < 3:
                assert loop.time() < deadline, queue
                await asyncio.sleep(0.01)
            assert (queue.leased, queue.visible, queue.dead_lettered) == (0, 0, 0)
            await batches.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("timeout", ["5", float("nan"), [1.0]])
def test_a_bad_close_timeout_is_refused_and_closes_nothing(track: Tracker,
                                                           timeout: Any) -> None:
    # until 2026-12-05 a str raised TypeError from inside asyncio with the client half
    # closed, and NaN was taken (a deadline never reached), where the blocking client
    # raises InvalidArgument and closes nothing
    server = track.server()

    async def main() -> None:
        client = await aio.connect(server.endpoint, timeout=5.0)
        await client.create_queue("q")
        with pytest.raises(fastfanout.InvalidArgument, match="timeout"):
            await client.close(timeout=timeout)
        assert not client.closed
        assert await client.list_queues() == ["q"]
        await client.close()

    asyncio.run(main())


def test_close_timeout_bounds_the_flush_of_open_producers(track: Tracker) -> None:
    # until 2026-12-05 each producer's flush waited its own deadline (the client's
    # timeout plus the broker's hold_timeout, 35 s here) whatever close's timeout said
    endpoint, process = _stopped_broker(track)

    async def main() -> float:
        client = await aio.connect(endpoint, timeout=5.0)
        await client.create_topic("t")
        producer = await client.producer("t", linger=60.0)
        producer.offer(b"never answered")
        os.kill(process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(fastfanout.BrokenConnection, match="close's timeout"):
                await client.close(timeout=1.0)
            assert client.closed
            return time.monotonic() - started
        finally:
            os.kill(process.pid, signal.SIGCONT)

    assert asyncio.run(main()) < QUICK


def test_a_close_cancelled_after_the_broker_was_killed_raises_cancelled(
        track: Tracker) -> None:
    # until 2026-12-05 the close swallowed its own cancellation (a suppress around the
    # await of each of its tasks took it for theirs) and returned as if not cancelled:
    # an asyncio.timeout or a TaskGroup around it lost its cancel
    endpoint = track.endpoint()
    process = track.broker_process(endpoint)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = await aio.connect(endpoint, timeout=5.0)
        await client.create_queue("q")
        await asyncio.to_thread(_kill, process)
        with pytest.raises(fastfanout.BrokenConnection):
            await client.list_queues()     # the connection is known lost from now
        closing = asyncio.ensure_future(client.close())
        deadline = loop.time() + QUICK
        while not client.closed:           # close() runs up to its wait for its tasks
            assert loop.time() < deadline
            await asyncio.sleep(0)
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        deadline = loop.time() + QUICK
        while asyncio.all_tasks() != {asyncio.current_task()}:   # its tasks end anyway
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        with pytest.raises(fastfanout.Closed):
            await client.list_queues()

    asyncio.run(main())


def _kill(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL: the broker says no GOODBYE; reaped within a deadline."""
    process.send_signal(signal.SIGKILL)
    process.wait(QUICK)
