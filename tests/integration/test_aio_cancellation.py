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
import time

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
    """A broker process on a new ipc endpoint, to be paused (SIGSTOP) by the test."""
    endpoint = track.endpoint()
    return endpoint, track.broker_process(endpoint)


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
