"""The README's asyncio promise, literally: "the same calls, awaited".

Every public call of the asyncio client, of its messages, listeners and producers works
with ``await`` (a plain call returns something awaitable), except the iterators
(``consume``, ``consume_batches``), which are for ``async for``; and ``async with
client.producer(...)`` works as ``with client.producer(...)`` does in the blocking client.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Any
from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout import aio
from fastfanout.client import Client
from fastfanout.client.producers import AsyncProducer

# public calls of AsyncClient that are plain (not coroutine) functions, and what each
# returns instead: every one of them is still awaitable
PLAIN_CALLS = {"flush", "producer", "listen", "publish_nowait", "send_nowait",
               "publish_batch_nowait", "send_batch_nowait"}
ITERATORS = {"consume", "consume_batches"}


def test_every_call_is_a_coroutine_an_iterator_or_a_known_plain_call() -> None:
    names = {name for name, _ in inspect.getmembers(aio.AsyncClient)
             if not name.startswith("_") and name not in ("closed", "info")}
    blocking = {name for name, _ in inspect.getmembers(Client) if not name.startswith("_")}
    assert blocking - {"closed", "info"} <= names        # the same calls
    for name in names - PLAIN_CALLS - ITERATORS:
        assert inspect.iscoroutinefunction(getattr(aio.AsyncClient, name)), name
    for name in ITERATORS:
        # called plainly for ``async for``: a native async iterator (consume: no
        # generator step per message), or one whose ``for`` raises WrongClient
        # (consume_batches)
        function = getattr(aio.AsyncClient, name)
        assert not inspect.iscoroutinefunction(function), name
        assert not inspect.isasyncgenfunction(function), name
        assert function.__doc__ and "async for" in function.__doc__, name
    for name in PLAIN_CALLS:
        function = getattr(aio.AsyncClient, name)
        assert not inspect.iscoroutinefunction(function), name
        assert function.__doc__, name


async def _wait_for(predicate: Any, what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def test_every_plain_call_can_be_awaited(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_topic("t")
            await client.create_queue("q")
            await client.subscribe("t", "q")

            # the pipelined publishes: futures
            first = client.publish_nowait("t", b"1")
            second = client.send_nowait("q", b"2")
            batch = client.publish_batch_nowait("t", [b"3", b"4"])
            sent = client.send_batch_nowait("q", [b"5"])
            # flush: a plain call sends; awaited, it also waits for the answers
            assert await client.flush() is None
            assert first.done() and second.done() and batch.done() and sent.done()
            assert (await first).message_id < (await second).message_id
            assert len(await batch) == 2 and len(await sent) == 1
            client.publish_nowait("t", b"6")
            client.flush()                    # plain: sent without waiting
            assert await client.flush() is None   # nothing more to send: answered at once

            # producer: awaited, or entered
            producer = await client.producer("t")
            await producer.offer(b"7")        # a plain call that may be awaited
            await producer.close()
            async with client.producer("t") as entered:
                assert isinstance(entered, AsyncProducer)
                entered.offer(b"8")
            assert entered.published == 1     # closed, so flushed, at the end
            with pytest.raises(fastfanout.NotFound):
                await client.producer("missing")
            with pytest.raises(fastfanout.NotFound):
                async with client.producer("missing"):
                    pass
            with pytest.raises(fastfanout.InvalidArgument):
                async with client.producer("t", batch_messages=0):
                    pass

            # listen: the listener itself; its close() may be awaited
            listener = await client.listen("t")
            assert isinstance(listener, aio.AsyncListener)
            assert await listener.close() is None
            async with client.listen("t") as entered_listener:
                assert entered_listener.pattern == "t"

            stats = await client.stats()
            assert stats.queues["q"].visible == 8

    asyncio.run(main())


def test_message_calls_can_be_awaited_and_act(track: Tracker) -> None:
    """``await message.ack()`` (and nack, extend, term) works, and the ack goes out once."""
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("dlq")
            await client.create_queue("q", dead_letter_queue="dlq", max_receive_count=10)
            await client.send_batch("q", [b"a", b"b", b"c", b"d"])

            async def stats() -> Any:
                return (await client.stats()).queues["q"]

            # received messages
            a, b = await client.receive("q", max_messages=2)
            assert await a.ack() is None
            assert await b.extend(30) is None
            await _wait_for(lambda: _acked(stats, 1), "the awaited ack")
            assert await b.nack(delay=0) is None
            # pushed messages
            seen = []
            async for message in client.consume("q", prefetch=10, timeout=2.0):
                seen.append(message.body)
                if message.body == b"b":
                    assert await message.term() is None
                else:
                    assert await message.ack() is None
                if len(seen) == 3:
                    break
            assert sorted(seen) == [b"b", b"c", b"d"]
            await _wait_for(lambda: _acked(stats, 3), "the pushed acks")
            dead = await client.receive("dlq")
            assert dead[0].body == b"b" and dead[0].dead_letter is not None
            assert (await stats()).acked == 3     # each ack went out once

    asyncio.run(main())


async def _acked(stats: Any, count: int) -> bool:
    queue = await stats()
    return bool(queue.acked == count)


def test_readme_asyncio_sample_forms(track: Tracker) -> None:
    """The README's forms: ``async with connect()``, gathered publishes, ``async for``
    over ``consume`` with ``message.ack()``, and ``async with client.producer()``."""
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_topic("orders")
            await client.create_queue("billing")
            await client.subscribe("orders", "billing")
            results = await asyncio.gather(
                *(client.publish("orders", b"order %d" % n) for n in range(4, 7)))
            assert len({result.message_id for result in results}) == 3
            async with client.producer("orders") as producer:
                for n in range(100):
                    producer.offer(b"bulk %d" % n)
            count = 0
            async for message in client.consume("billing", prefetch=100, timeout=1.0):
                await message.ack()
                count += 1
            assert count == 103
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            queue = (await client.stats()).queues["billing"]
            assert queue.acked == 103 and queue.messages == 0

    asyncio.run(main())


@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_a_connect_that_never_completes_leaves_no_socket_open(tmp_path: Any, how: str) -> None:
    # nobody serves this endpoint: the HELLO is never answered
    endpoint = f"ipc://{tmp_path}/nobody.sock"

    async def main() -> aio.AsyncClient:
        client = aio.AsyncClient(endpoint, timeout=0.2 if how == "timeout" else 30.0)
        opening = asyncio.ensure_future(client.connection.start())
        if how == "cancel":
            done, _ = await asyncio.wait([opening], timeout=0.2)
            assert not done
            opening.cancel()
        with pytest.raises((asyncio.CancelledError, fastfanout.FastFanoutError)):
            await opening
        return client

    client = asyncio.run(main())
    assert client.connection.transport.closed
    assert client.connection.tasks and all(task.done() for task in client.connection.tasks)


def test_each_await_of_connect_opens_its_own_client(track: Tracker) -> None:
    # awaiting one connect() twice started one client twice: the first start's reader
    # and heartbeat tasks ran on after close()
    server = track.server()

    async def main() -> None:
        opening = aio.connect(server.endpoint, timeout=5.0)
        first = await opening
        second = await opening
        assert first is not second
        async with opening as third:
            assert third not in (first, second)
            assert await third.list_queues() == []
        await first.close()
        await second.close()
        await first.close()   # a second close is a no-op
        assert asyncio.all_tasks() == {asyncio.current_task()}

    asyncio.run(main())


def test_a_connect_misused_or_never_awaited_leaves_no_socket_open(tmp_path: Any) -> None:
    """``with aio.connect()`` raised ``WrongClient`` ("nothing opened"), but the client
    ``connect`` makes ahead (to check its options at once) kept its two sockets open:
    ``python -W default`` printed a ResourceWarning for each at exit; as it did for a
    ``connect()`` never awaited."""
    import subprocess
    import sys

    script = tmp_path / "misuse.py"
    script.write_text(
        "import asyncio\n"
        "import fastfanout\n"
        "from fastfanout import aio\n"
        "async def main():\n"
        "    try:\n"
        f"        with aio.connect('ipc://{tmp_path}/b.sock'):\n"
        "            pass\n"
        "    except fastfanout.WrongClient:\n"
        "        print('refused')\n"
        f"    kept = aio.connect('ipc://{tmp_path}/b.sock')   # never awaited\n"
        "asyncio.run(main())\n")
    done = subprocess.run([sys.executable, "-W", "default", str(script)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == "refused\n", done.stderr
    assert "ResourceWarning" not in done.stderr, done.stderr
