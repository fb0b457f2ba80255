"""A server runs a guest event loop in its own thread: an asyncio client of the same
server, inside that thread, publishes, consumes and acks without another thread."""

from __future__ import annotations

import threading

import pytest
from conftest import Tracker

from fastfanout.aio import connect
from fastfanout.server import Server
from fastfanout.server.guests import SteppedLoop


def test_a_guest_loop_talks_to_its_own_host(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = Server(endpoint)
    loop = SteppedLoop()
    threads: set[str] = set()
    done = threading.Event()

    async def guest() -> list[bytes]:
        threads.add(threading.current_thread().name)
        async with await connect(endpoint, timeout=5.0) as client:
            await client.create_topic("t")
            await client.create_queue("q")
            await client.subscribe("t", "q")
            for index in range(50):
                await client.publish("t", f"m{index}".encode())
            bodies: list[bytes] = []
            async for batch in client.consume_batches("q", prefetch=100, timeout=5.0):
                threads.add(threading.current_thread().name)
                bodies += [bytes(message.body) for message in batch]
                await batch.ack()
                if len(bodies) == 50:
                    break
            return bodies

    task = loop.create_task(guest())
    task.add_done_callback(lambda _: done.set())
    server.host(loop)
    server.start()
    try:
        assert done.wait(20.0), "the guest did not finish"
        assert task.result() == [f"m{index}".encode() for index in range(50)]
        assert threads == {"fastfanout-server"}   # the server's own thread, only
        late = SteppedLoop()
        with pytest.raises(RuntimeError):
            server.host(late)                     # too late: the loop runs
        late.close()
    finally:
        server.stop()
    assert loop.stepper is None                 # released: this thread may close it
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
