"""Requests and replies through a server: both clients as requester and responder, local
channels and sockets, the served broker's own requests, requesters that go away, and
REPLY frames a client library would never send."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from typing import Any as Tracker

import pytest
from conftest import raw_dealer

from fastfanout import BrokenConnection, InvalidArgument, NoReply, NoResponders, Reply, aio
from fastfanout.records import REPLY_TO
from fastfanout.semantics.replies import encode_reply
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status

DEADLINE = 10.0


def wired(client, topic: str = "t", queue: str = "q") -> None:
    client.create_topic(topic)
    client.create_queue(queue)
    client.subscribe(topic, queue)


def answering(client, queue: str, count: int = 1) -> threading.Thread:
    """A thread of ``client`` answering ``count`` requests of ``queue`` (body upper-cased,
    its attribute ``n`` doubled), acking each."""

    def run() -> None:
        for message in client.consume(queue, prefetch=4, timeout=DEADLINE):
            message.reply(bytes(message.body).upper(),
                          attributes={"n": message.attributes.get("n", 0) * 2})
            message.ack()
            nonlocal count
            count -= 1
            if count == 0:
                return

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("local_channel", [None, False])
def test_a_client_request_gets_another_clients_reply(track: Tracker, endpoint: str,
                                                     local_channel: bool | None) -> None:
    track.server(endpoint)
    requester = track.client(endpoint, local_channel=local_channel)
    responder = track.client(endpoint, local_channel=local_channel)
    wired(requester)
    thread = answering(responder, "q", count=20)
    for index in range(20):
        reply = requester.request("t", b"ask%d" % index, attributes={"n": index},
                                  timeout=DEADLINE)
        assert reply == Reply(b"ASK%d" % index, {"n": 2 * index})
    thread.join(DEADLINE)
    stats = requester.server_stats()
    assert stats["replies_routed"] == 20
    assert stats.get("replies_dropped", 0) == 0
    # a consumer's acks are pipelined: the last ones may still be on their way
    track.wait_until(lambda: requester.stats().queues["q"].acked == 20, what="20 acked")


def test_asyncio_clients_request_and_reply(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    wired(track.client(endpoint))

    async def main() -> tuple[Reply, Reply]:
        async with aio.connect(endpoint) as requester, aio.connect(endpoint) as responder:

            async def answer(count: int) -> None:
                async for message in responder.consume("q", timeout=DEADLINE):
                    assert message.reply_to is not None
                    message.reply(b"re:" + bytes(message.body))   # sent at once
                    message.ack()
                    count -= 1
                    if count == 0:
                        return

            answering_task = asyncio.create_task(answer(2))
            first = await requester.request("t", b"one", timeout=DEADLINE)
            second = await requester.request("t", b"two", timeout=DEADLINE)
            await answering_task
            return first, second

    first, second = asyncio.run(main())
    assert (first.body, second.body) == (b"re:one", b"re:two")


def test_an_asyncio_responder_replies_by_address_with_await(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    requester = track.client(endpoint)
    wired(requester)

    async def respond() -> None:
        async with aio.connect(endpoint) as responder:
            (message,) = await responder.receive("q", wait=DEADLINE)
            await responder.reply(message.attributes[REPLY_TO], b"awaited",
                                  attributes={"k": "v"})
            await message.ack()

    thread = threading.Thread(target=asyncio.run, args=(respond(),), daemon=True)
    thread.start()
    assert requester.request("t", b"x", timeout=DEADLINE) == Reply(b"awaited", {"k": "v"})
    thread.join(DEADLINE)


def test_no_responders_and_no_reply_over_the_wire(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("lonely")
    with pytest.raises(NoResponders):
        client.request("lonely", b"x", timeout=DEADLINE)
    wired(client)
    with pytest.raises(NoReply):
        client.request("t", b"x", timeout=0.2)
    # the request is still there (no ttl unless given); its late reply is
    # dropped by the requester, and the next request of the same client gets its own
    # reply, not the late one
    (late,) = client.receive("q")
    late.reply(b"late")
    late.ack()
    thread = answering(track.client(endpoint), "q")
    assert client.request("t", b"now", timeout=DEADLINE).body == b"NOW"
    thread.join(DEADLINE)
    assert client.connection.core.replies_dropped == 1   # the late one, read before
    assert client.server_stats().get("replies_dropped", 0) == 0   # its inbox was held


def test_a_request_with_ttl_timeout_expires_for_both_clients(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    client = track.client(endpoint)
    wired(client)
    with pytest.raises(NoReply):
        client.request("t", b"blocking", timeout=0.1, ttl=0.05)

    async def main() -> None:
        async with aio.connect(endpoint) as aclient:
            with pytest.raises(NoReply):
                await aclient.request("t", b"asyncio", timeout=0.1, ttl=0.05)

    asyncio.run(main())
    assert client.receive("q") == []
    assert client.stats().queues["q"].dropped["expired"] == 2


def test_a_reply_for_a_requester_that_is_gone_is_dropped_and_counted(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    responder = track.client(endpoint)
    wired(responder)
    script = textwrap.dedent("""
        import sys
        from fastfanout.client import connect
        with connect(sys.argv[1]) as client:
            try:
                client.request("t", b"from a process that leaves", timeout=0.3)
            except Exception as exc:
                print(type(exc).__name__, flush=True)
    """)
    process = subprocess.run([sys.executable, "-c", script, endpoint], capture_output=True,
                             timeout=60, check=True)
    assert process.stdout.split() == [b"NoReply"]
    track.wait_until(lambda: responder.server_stats()["connections"] == 1,
                     what="the requester's session ended")
    (message,) = responder.receive("q", wait=DEADLINE)
    message.reply(b"nobody waits")   # not an error
    message.ack()
    assert responder.server_stats()["replies_dropped"] == 1


def test_the_served_brokers_own_request_gets_a_clients_reply(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint)
    responder = track.client(endpoint)
    wired(responder)
    thread = answering(responder, "q")
    reply = server.broker.request("t", b"from the broker", attributes={"n": 4},
                                  timeout=DEADLINE)
    thread.join(DEADLINE)
    assert reply == Reply(b"FROM THE BROKER", {"n": 8})
    assert server.broker.stats().replies.replies == 1
    assert responder.server_stats()["replies_routed"] == 1


def test_a_bad_reply_is_refused_and_the_connection_serves_on(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    client = track.client(endpoint)
    wired(client)
    with pytest.raises(InvalidArgument, match="reply address"):
        client.reply("_INBOX.nothex.1", b"x")
    with pytest.raises(InvalidArgument, match="finite"):
        client.reply("_INBOX.0123456789abcdef.1", b"x", attributes={"n": float("inf")})
    assert client.list_topics() == ["t"]
    assert client.server_stats().get("replies_dropped", 0) == 0


@pytest.mark.parametrize(("frames", "code"), [
    ([], "malformed_frame"),
    ([b"_INBOX.0123456789abcdef.1"], "malformed_frame"),
    ([b"\xff\xfe", encode_reply(b"x", None)], "malformed_frame"),
    ([b"not an address", encode_reply(b"x", None)], "invalid_argument"),
    ([b"_INBOX.0123456789abcdef.1", b"not a batch"], "malformed_frame"),
])
def test_a_raw_reply_request_the_clients_never_send_is_answered_with_its_error(
        track: Tracker, frames: list[bytes], code: str) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    with raw_dealer(endpoint) as dealer:
        dealer.send_multipart([protocol.encode_header(Opcode.REPLY, 9), *frames])
        assert dealer.poll(int(DEADLINE * 1000))
        header, *payload = dealer.recv_multipart()
        assert protocol.decode_header(header)[1:] == (Status.ERROR, 9)
        assert protocol.decode_error(payload[0]).code == code
    client = track.client(endpoint)
    assert client.server_stats()[f"error.{code}"] == 1


def test_a_client_keeps_its_inbox_over_a_broker_restart(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint)
    requester = track.client(endpoint)
    wired(requester)
    thread = answering(track.client(endpoint), "q")
    assert requester.request("t", b"before", timeout=DEADLINE).body == b"BEFORE"
    thread.join(DEADLINE)
    track.stop_server(server)
    track.server(endpoint)
    responder = track.client(endpoint)
    wired(responder)
    thread = answering(responder, "q")
    # the requester's first call after the stop may meet the old session's GOODBYE
    # (ServerStopping: the next call reconnects); a call connects anew, naming the same
    # inbox in its HELLO
    for attempt in range(2):
        try:
            reply = requester.request("t", b"after", timeout=DEADLINE)
            break
        except BrokenConnection:
            if attempt:
                raise
    assert reply.body == b"AFTER"
    thread.join(DEADLINE)


def test_an_asyncio_request_made_while_reconnecting_gets_its_reply(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint)
    wired(track.client(endpoint))

    async def before_and_after() -> tuple[bytes, bytes]:
        async with aio.connect(endpoint) as requester:
            thread = answering(track.client(endpoint), "q")
            before = (await requester.request("t", b"one", timeout=DEADLINE)).body
            thread.join(DEADLINE)
            track.stop_server(server)
            track.server(endpoint)
            responder = track.client(endpoint)
            wired(responder)
            answering(responder, "q")
            for _ in range(100):   # the first calls may meet the old connection's end
                try:
                    after = (await requester.request("t", b"two", timeout=DEADLINE)).body
                    break
                except BrokenConnection:
                    await asyncio.sleep(0.05)
            return before, after

    assert asyncio.run(before_and_after()) == (b"ONE", b"TWO")


def test_the_served_broker_answers_a_clients_request(track: Tracker) -> None:
    endpoint = track.endpoint()
    server = track.server(endpoint)
    broker = server.broker
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")

    def respond() -> None:   # in this process, through the Broker object the server serves
        (message,) = broker.receive("q", wait=DEADLINE)
        message.reply(b"from the broker's thread", attributes={"k": 1})
        message.ack()

    thread = threading.Thread(target=respond, daemon=True)
    thread.start()
    requester = track.client(endpoint)
    reply = requester.request("t", b"x", timeout=DEADLINE)
    thread.join(DEADLINE)
    assert reply == Reply(b"from the broker's thread", {"k": 1})
    assert requester.server_stats()["replies_routed"] == 1
    broker.reply("_INBOX.0123456789abcdef.1", b"nobody")   # a session nobody holds
    track.wait_until(lambda: requester.server_stats().get("replies_dropped") == 1,
                     what="the reply to nobody counted")
