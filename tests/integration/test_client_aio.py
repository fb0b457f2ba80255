"""The asyncio client: every Broker operation the blocking client has, streams, CURVE."""

from __future__ import annotations

import asyncio
import inspect
import threading
from pathlib import Path
from typing import Any
from typing import Any as Tracker

import pytest
import zmq.auth

import fastfanout
from fastfanout import aio
from fastfanout.client import Client
from fastfanout.transport.local import AsyncLocalTransport
from fastfanout.transport.sockets import load_curve_keys
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode

# client methods that are not Broker operations, or whose asyncio form is another call
NOT_BROKER_OPERATIONS = {"closed", "close", "flush", "publish_nowait", "send_nowait",
                         "publish_batch_nowait", "send_batch_nowait"}


def test_asyncio_client_has_every_blocking_operation() -> None:
    names = {name for name, _ in inspect.getmembers(Client) if not name.startswith("_")}
    missing = sorted(name for name in names - NOT_BROKER_OPERATIONS
                     if not hasattr(aio.AsyncClient, name))
    assert missing == []
    # plain calls that return an awaitable, and iterators (tests/integration/test_aio_manners)
    for name in names - NOT_BROKER_OPERATIONS - {"info", "listen", "consume",
                                                 "consume_batches", "producer"}:
        assert inspect.iscoroutinefunction(getattr(aio.AsyncClient, name)), name


def test_asyncio_client_has_the_pipelined_publishes_of_the_blocking_one() -> None:
    for name in ("flush", "publish_nowait", "send_nowait", "publish_batch_nowait",
                 "send_batch_nowait"):
        assert hasattr(aio.AsyncClient, name), name
        assert not inspect.iscoroutinefunction(getattr(aio.AsyncClient, name)), name


def test_asyncio_administration(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_queue("dlq")
            await client.create_queue("q", max_receive_count=2, dead_letter_queue="dlq",
                                      redelivery_backoff=fastfanout.ExponentialBackoff(
                                          0.5, 2.0, 10.0))
            await client.create_queue("other")
            await client.create_topic("t")
            settings = await client.queue_settings("q")
            assert settings.dead_letter_queue == "dlq"
            assert settings.redelivery_backoff == fastfanout.ExponentialBackoff(0.5, 2.0, 10.0)
            sid = await client.subscribe("t", "q")
            other = await client.subscribe("t", "other", filter_policy={"kind": ["x"]})
            assert await client.list_subscriptions() == {sid: ("t", "q"), other: ("t", "other")}
            assert (await client.subscription(other)).filter_policy is not None
            await client.set_filter_policy(other, None)
            assert (await client.subscription(other)).filter_policy is None
            assert (await client.publish("t", b"one")).deliveries == 2
            await client.unsubscribe(other)
            with pytest.raises(fastfanout.NotFound):
                await client.unsubscribe(other)
            assert await client.list_subscriptions() == {sid: ("t", "q")}
            assert (await client.publish("t", b"two")).deliveries == 1
            assert await client.purge("other") == 1
            await client.delete_topic("t")
            await client.delete_queue("other")
            assert await client.list_topics() == []
            assert await client.list_queues() == ["dlq", "q"]
            with pytest.raises(fastfanout.InvalidArgument, match="dead-letter"):
                await client.delete_queue("dlq")  # q dead-letters into it
            assert await client.check()
            assert (await client.server_stats())["connections"] >= 1

    asyncio.run(main())


def test_asyncio_leases(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("dlq")
            await client.create_queue("q", dead_letter_queue="dlq", max_receive_count=5,
                                      visibility_timeout=30.0)
            await client.send_batch("q", [b"a", b"b"])
            first, second = await client.receive("q", max_messages=2)
            await client.extend(first.receipt, 0)  # give it back at once
            again = await client.receive("q", max_messages=1)
            assert again[0].id == first.id and again[0].receive_count == 2
            with pytest.raises(fastfanout.StaleReceipt):
                await client.ack(first.receipt)  # that delivery's lease ended
            await client.term(second.receipt)
            dead = await client.receive("dlq")
            assert dead[0].dead_letter is not None
            assert dead[0].dead_letter.reason == "rejected"
            await client.ack(dead[0].receipt)
            await client.term(again[0].receipt)
            assert await client.redrive("dlq", to="q", max_messages=5) == 1
            back = await client.receive("q")
            assert back[0].id == first.id
            await client.ack(back[0].receipt)
            stats = await client.stats()
            assert stats.queues["q"].visible == 0 and stats.queues["dlq"].visible == 0

    asyncio.run(main())


def test_asyncio_consume_of_a_queue_name_that_is_no_str_is_invalid_argument(
        track: Tracker) -> None:
    # It raised Python's TypeError from the native cursor's signature.
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_queue("q")
            for queue in (5, b"q", None):
                with pytest.raises(fastfanout.InvalidArgument, match="queue name"):
                    client.consume(queue)  # type: ignore[arg-type]
            await client.send("q", b"still there")
            async for message in client.consume("q", timeout=5.0):
                assert message.body == b"still there"
                message.ack()
                break

    asyncio.run(main())


def test_asyncio_listen(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_topic("ticks.a")
            await client.create_topic("tickets")
            async with client.listen("ticks.*") as listener:   # live once entered
                assert await listener.recv_batch(0.05) is None
                await client.publish("tickets", b"shares the prefix, not the pattern")
                await client.publish_batch("ticks.a", [b"1", b"2"])
                got = []
                async for message in listener:
                    got.append((message.topic, message.sequence, message.body))
                    if len(got) == 2:
                        break
                assert got == [("ticks.a", 1, b"1"), ("ticks.a", 2, b"2")]
                assert listener.received == 2 and listener.gaps == 0

    asyncio.run(main())


def test_asyncio_curve(track: Tracker, tmp_path: Path) -> None:
    zmq.auth.create_certificates(tmp_path, "broker")
    clients = tmp_path / "clients"
    clients.mkdir()
    zmq.auth.create_certificates(clients, "alice")
    endpoint = track.endpoint("tcp")
    track.server(endpoint, curve=load_curve_keys(str(tmp_path / "broker.key_secret")),
                 curve_clients=str(clients))

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0,
                               curve_server_key=str(tmp_path / "broker.key"),
                               curve_keys=str(clients / "alice.key_secret")) as client:
            await client.create_topic("secret")
            assert await client.list_topics() == ["secret"]

    asyncio.run(main())


def test_asyncio_unencodable_argument_is_invalid(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            for call in (client.nack(2**64), client.extend(2**64, 1.0), client.term(-(2**64))):
                with pytest.raises(fastfanout.InvalidArgument,
                                   match="outside the 64-bit integer range"):
                    await call

    asyncio.run(main())


def _count_fires(client: aio.AsyncClient) -> list[tuple[int, int]]:
    """Record (opcode, payload frames) of the requests the client sends without a wait,
    heartbeats (sent on their own clock) left out."""
    fired: list[tuple[int, int]] = []

    def counted_fire(opcode: int, payload: list[bytes]) -> None:
        if opcode not in (Opcode.HEARTBEAT, Opcode.STATS):   # STATS: the test's polling
            fired.append((opcode, len(payload)))

    client.connection.core.on_request = counted_fire
    return fired


def test_message_acks_of_one_loop_iteration_go_in_one_request(track: Tracker,
                                                              endpoint: str) -> None:
    server = track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=60.0)
            await client.send_batch("q", [b"m%d" % i for i in range(20)])
            messages = await client.receive("q", max_messages=20)
            await client.ack(messages[0].receipt)   # acked already: its receipt is stale
            fired = _count_fires(client)
            for message in messages[:-1]:
                message.ack()
            deadline = asyncio.get_running_loop().time() + 10.0
            while (await client.stats()).queues["q"].acked < 19:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            # one SETTLE: one frame for the run of acks of one delivery, then SETTLE_EACH
            # (acks of single messages); the stale receipt failed alone
            assert fired == [(Opcode.SETTLE, 2)]
            assert server.counters["error.stale_receipt"] == 1
            messages[-1].ack()   # queued when close() begins: sent before its BYE

    asyncio.run(main())
    queue = track.client(endpoint).stats().queues["q"]
    assert queue.acked == 20 and queue.leased == 0 and queue.visible == 0


def test_one_iterations_acks_are_split_at_settle_max_frames(track: Tracker,
                                                           endpoint: str) -> None:
    track.server(endpoint)
    count = protocol.SETTLE_MAX_FRAMES + 76

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=60.0)
            await client.send_batch("q", [b"m"] * count)
            # one delivery each: acks of one delivery share a frame, these take one each
            messages = [(await client.receive("q"))[0] for _ in range(count)]
            fired = _count_fires(client)
            for message in messages:
                message.ack()
            deadline = asyncio.get_running_loop().time() + 10.0
            while (await client.stats()).queues["q"].acked < count:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.01)
            assert fired == [(Opcode.SETTLE, protocol.SETTLE_MAX_FRAMES + 1),
                             (Opcode.SETTLE, 76 + 1)]

    asyncio.run(main())


async def _topic_to_queue(client: aio.AsyncClient) -> None:
    """Topic "t" feeding queue "q"."""
    await client.create_topic("t")
    await client.create_queue("q")
    await client.subscribe("t", "q")


def _count_sends(client: aio.AsyncClient) -> list[int]:
    """Record the opcode of every request the client sends, heartbeats left out."""
    sent: list[int] = []

    def counted_send(opcode: int, payload: list[bytes]) -> None:
        if opcode != Opcode.HEARTBEAT:
            sent.append(opcode)

    client.connection.core.on_request = counted_send
    return sent


def test_publishes_of_one_loop_iteration_travel_in_one_request(track: Tracker,
                                                               endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0, batch_messages=50) as client:
            await _topic_to_queue(client)
            sent = _count_sends(client)
            results = await asyncio.gather(
                *(client.publish("t", b"m%d" % i) for i in range(40)),
                client.send("q", b"direct"))
            assert sent == [Opcode.PUBLISH, Opcode.SEND]    # one request per target
            ids = [result.message_id for result in results[:40]]
            assert ids == sorted(ids) and len(set(ids)) == 40
            assert all(result.deliveries == 1 for result in results)
            sent.clear()
            futures = [client.publish_nowait("t", b"n") for _ in range(120)]
            assert sent == [Opcode.PUBLISH, Opcode.PUBLISH]  # two full batches of 50 at once
            assert len({(await f).message_id for f in futures}) == 120   # the rest: 1 more
            assert sent == [Opcode.PUBLISH] * 3
            # another target's batch fails alone, whole: every future of it raises
            good = client.publish_nowait("t", b"ok")
            bad = [client.publish_nowait("missing", b"x") for _ in range(3)]
            assert (await good).deliveries == 1
            for future in bad:
                with pytest.raises(fastfanout.NotFound):
                    await future
            last = client.publish_nowait("t", b"at close")
        assert last.done() and last.result().deliveries == 1   # close() sent and waited

    asyncio.run(main())
    assert track.client(endpoint).stats().queues["q"].enqueued == 40 + 1 + 120 + 1 + 1


def test_batch_nowait_and_flush(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _topic_to_queue(client)
            sent = _count_sends(client)
            future = client.publish_batch_nowait(
                "t", [b"a", fastfanout.PublishEntry(b"b", attributes={"k": "v"})])
            direct = client.send_batch_nowait("q", [b"c"])
            assert sent == [Opcode.PUBLISH, Opcode.SEND]   # both left at once
            results = await future
            assert [r.deliveries for r in results] == [1, 1]
            assert (await direct)[0].deliveries == 1
            # a bad entry raises at the call and sends nothing
            sent.clear()
            with pytest.raises(fastfanout.InvalidArgument):
                client.publish_batch_nowait("t", [b"ok", 42])
            with pytest.raises(fastfanout.InvalidArgument):
                client.send_batch_nowait(7, [b"x"])   # type: ignore[arg-type]
            assert sent == []
            # a failing batch fails its future, whole
            with pytest.raises(fastfanout.NotFound):
                await client.publish_batch_nowait("missing", [b"x", b"y"])
            # flush() sends this iteration's batch now, without waiting for the answer
            sent.clear()
            pending = client.publish_nowait("t", b"d")
            assert sent == []
            client.flush()
            assert sent == [Opcode.PUBLISH] and not pending.done()
            assert (await pending).deliveries == 1
            last = client.publish_batch_nowait("t", [b"at close"])
        assert last.done() and last.result()[0].deliveries == 1   # close() waited for it
        assert [m.body for m in track.client(endpoint).receive("q", max_messages=10)] == [
            b"a", b"b", b"c", b"d", b"at close"]

    asyncio.run(main())


def test_requests_do_not_overtake_earlier_publishes(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await _topic_to_queue(client)
            client.publish_nowait("t", b"1")
            await client.publish_batch("t", [b"2"])     # awaited: leaves after "1"
            client.publish_nowait("t", b"3")
            fourth = client.publish_batch_nowait("t", [b"4"])
            client.send_nowait("q", b"5")
            await client.send("q", b"6")
            await fourth
            bodies = [m.body for m in await client.receive("q", max_messages=10)]
            assert bodies == [b"1", b"2", b"3", b"4", b"5", b"6"]

    asyncio.run(main())


def test_asyncio_client_reconnects_with_a_new_channel_after_its_broker_restarts(
        track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=2.0) as client:
            first = client.connection.transport
            assert isinstance(first, AsyncLocalTransport)
            await client.create_queue("q")
            server.stop()
            track.server(endpoint)
            with pytest.raises(fastfanout.BrokenConnection):   # one, then it reconnects
                await client.list_queues()
            assert await client.list_queues() == []   # a new broker: a new session
            transport = client.connection.transport
            assert isinstance(transport, AsyncLocalTransport) and transport is not first
            assert first.closed
            await client.create_queue("q")
            assert (await client.send("q", b"again")).deliveries == 1
            assert [m.body for m in await client.receive("q")] == [b"again"]
            assert (await client.server_stats())["local_sessions"] == 1

    asyncio.run(main())


def test_a_lost_broker_fails_pipelined_sends_without_callback_errors(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        errors: list[dict[str, Any]] = []
        loop.set_exception_handler(lambda _, context: errors.append(context))
        async with aio.connect(server.endpoint, timeout=1.0) as client:
            assert isinstance(client.connection.transport, AsyncLocalTransport)
            await client.create_queue("q")
            server.stop()
            with pytest.raises(fastfanout.BrokenConnection):
                await client.list_queues()
            pipelined = [client.send_nowait("q", b"x"), client.publish_nowait("t", b"y")]
            for future in pipelined:
                with pytest.raises(fastfanout.BrokenConnection):
                    await future
            with pytest.raises(fastfanout.BrokenConnection):
                await client.send("q", b"z")
        assert errors == []

    asyncio.run(main())


@pytest.mark.parametrize("how", ["cancel", "wait_for"])
def test_a_cancelled_receive_leaks_no_lease(track: Tracker, endpoint: str, how: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_queue("q", visibility_timeout=30.0)

            async def long_polls() -> int:
                return int((await client.server_stats())["long_polls"])

            if how == "cancel":
                waiting = asyncio.ensure_future(client.receive("q", wait=5.0))
                deadline = loop.time() + 5.0
                while await long_polls() != 1:
                    assert loop.time() < deadline
                    await asyncio.sleep(0.01)
                waiting.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await waiting
            else:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(client.receive("q", wait=5.0), 0.2)
            deadline = loop.time() + 5.0
            while await long_polls() != 0:   # withdrawn (CANCEL), not left to wait
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            await client.send("q", b"m")
            started = loop.time()
            got = await client.receive("q", wait=20.0)
            assert [m.body for m in got] == [b"m"]
            # the abandoned long poll was withdrawn before it leased anything: this is
            # the message's first delivery
            assert got[0].receive_count == 1
            assert loop.time() - started < 10.0   # not the visibility timeout, nor the wait
            got[0].ack()
            deadline = loop.time() + 5.0
            while (queue := (await client.stats()).queues["q"]).acked < 1:
                assert loop.time() < deadline
                await asyncio.sleep(0.01)
            assert queue.leased == 0 and queue.visible == 0

    asyncio.run(main())


def test_closing_the_client_ends_what_other_tasks_await(track: Tracker) -> None:
    # consumers iterating and a long poll in other tasks raise Closed at once, as in the
    # blocking client and the embedded broker (they used to wait forever)
    server = track.server()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = await aio.connect(server.endpoint, timeout=5.0)
        for queue in ("one", "batches", "polled"):
            await client.create_queue(queue)
            await client.send(queue, b"first")
        await client.receive("polled")   # leased: the long poll below waits
        started = {"one": asyncio.Event(), "batches": asyncio.Event()}

        async def consume() -> None:
            async for _ in client.consume("one"):
                started["one"].set()

        async def consume_batches() -> None:
            async for _ in client.consume_batches("batches", timeout=30.0):
                started["batches"].set()

        tasks = [asyncio.ensure_future(consume()), asyncio.ensure_future(consume_batches()),
                 asyncio.ensure_future(client.receive("polled", wait=20.0))]
        for event in started.values():
            await asyncio.wait_for(event.wait(), 5.0)
        deadline = loop.time() + 5.0
        while int((await client.server_stats())["long_polls"]) != 1:
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        await client.close()
        done, _ = await asyncio.wait(tasks, timeout=2.0)
        assert len(done) == 3
        for task in tasks:
            assert isinstance(task.exception(), fastfanout.Closed)
        await client.close()   # a second close is a no-op

    asyncio.run(main())


def test_a_client_used_outside_its_event_loop_raises_wrong_event_loop(track: Tracker) -> None:
    # another loop's call waited for the client's timeout ("is it running?"), a publish
    # raised RuntimeError, and a thread's call worked by chance on the owner's reader
    server = track.server()

    async def connect_one() -> aio.AsyncClient:
        client = await aio.connect(server.endpoint, timeout=5.0)
        await client.create_queue("q")
        return client

    async def from_another_loop(client: aio.AsyncClient) -> None:
        for call in (client.list_queues, lambda: client.send("q", b"x"),
                     lambda: client.receive("q", wait=1.0)):
            with pytest.raises(fastfanout.WrongEventLoop, match="another event loop"):
                await call()
        with pytest.raises(fastfanout.WrongEventLoop):
            client.publish_nowait("q", b"x")
        with pytest.raises(fastfanout.WrongEventLoop):
            async for _ in client.consume("q"):
                pass

    ended = asyncio.run(connect_one())
    asyncio.run(from_another_loop(ended))
    asyncio.run(ended.close())   # its loop has ended: only the socket is closed
    assert ended.closed

    async def owner() -> None:
        client = await connect_one()
        thread_loop = asyncio.new_event_loop()
        try:
            await asyncio.to_thread(thread_loop.run_until_complete, from_another_loop(client))
            with pytest.raises(fastfanout.WrongEventLoop):
                await asyncio.to_thread(thread_loop.run_until_complete, client.close())
        finally:
            thread_loop.close()
        assert await client.list_queues() == ["q"]   # still fine in its own loop
        await client.close()

    asyncio.run(owner())
    with Client(server.endpoint, timeout=5.0) as client:
        assert client.stats().queues["q"].enqueued == 0


@pytest.mark.parametrize("producing", [False, True])
def test_a_cancelled_close_still_closes(track: Tracker, producing: bool) -> None:
    # close() cancelled while it waited for BYE's answer (or for a producer's flush) left
    # the client open with its tasks running: the next call raised BrokenConnection
    server = track.server()

    async def main() -> None:
        client = await aio.connect(server.endpoint, timeout=5.0)
        await client.create_queue("q")
        if producing:
            await client.create_topic("t")
            await client.subscribe("t", "q")
            producer = await client.producer("t", linger=10.0)
            for _ in range(100):
                producer.offer(b"x")
        closing = asyncio.ensure_future(client.close())
        await asyncio.sleep(0)   # close() runs up to its wait for BYE's answer
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert client.closed
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(fastfanout.Closed):
            await client.list_queues()
        await client.close()

    asyncio.run(main())


def test_publish_nowait_from_another_thread_into_an_open_batch_raises_wrong_event_loop(
        track: Tracker) -> None:
    # a bare body from a foreign thread joined the owner's open batch (the native fast
    # path), or opened a batch of another target while one was open, with no check
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as client:
            await client.create_topic("t")
            await client.create_queue("q")
            await client.subscribe("t", "q")
            refused: list[BaseException] = []

            def attempt(call: Any) -> None:
                try:
                    call()
                except fastfanout.WrongEventLoop as exc:
                    refused.append(exc)

            def foreign_calls() -> None:
                calls = (lambda: client.publish_nowait("t", b"foreign"),   # joins the batch
                         lambda: client.send_nowait("q", b"foreign"),      # opens another
                         lambda: client.publish_nowait("t", b"foreign", priority=1))
                for call in calls:
                    attempt(call)

                async def in_a_loop_of_its_own() -> None:
                    for call in calls:
                        attempt(call)

                asyncio.run(in_a_loop_of_its_own())

            owned = client.publish_nowait("t", b"owner")   # opens the batch of "t"
            # the loop is held here (no await) so the batch stays open meanwhile
            thread = threading.Thread(target=foreign_calls)
            thread.start()
            thread.join(10.0)
            assert not thread.is_alive()
            assert len(refused) == 6
            assert (await owned).message_id > 0
            await client.flush()
            received = await client.receive("q", max_messages=10)
            assert [m.body for m in received] == [b"owner"]

    asyncio.run(main())


def test_an_asyncio_consumer_stepped_after_close_raises_closed(track: Tracker) -> None:
    # until 2026-12-05 a step after close() yielded the rest of the pushed frame:
    # messages whose ack() raised Closed
    server = track.server()

    async def main() -> None:
        client = await aio.connect(server.endpoint, timeout=5.0)
        await client.create_queue("q")
        for n in range(3):
            await client.send("q", b"m%d" % n)
        messages = client.consume("q", prefetch=10).__aiter__()
        assert (await messages.__anext__()).body == b"m0"
        await client.close()
        with pytest.raises(fastfanout.Closed):
            await messages.__anext__()

    asyncio.run(main())
    track.wait_until(lambda: server.broker.stats().queues["q"].visible == 3,
                     what="every lease released by the goodbye")
