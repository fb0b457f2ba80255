"""Local channels against real brokers: when they attach, spills, full rings, lost peers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
from typing import Any as Tracker

import msgspec
import pytest
import zmq
from conftest import raw_dealer

import fastfanout.aio as aio
from fastfanout._ext import codec
from fastfanout._ext.shmring import MIN_CAPACITY
from fastfanout.errors import BrokenConnection, InvalidArgument, PeerGone, PeerLost
from fastfanout.server.loop import Server
from fastfanout.transport.local import AsyncLocalTransport, LocalTransport
from fastfanout.transport.local_channel import LocalChannel
from fastfanout.transport.sockets import AsyncDealerTransport, DealerTransport
from fastfanout.wire import protocol


def is_local(client) -> bool:
    return isinstance(client.connection.transport, LocalTransport)


def attach_raw(dealer: zmq.Socket[bytes], channel: LocalChannel) -> None:
    """ATTACH ``channel`` over ``dealer``, as a client in another language would."""
    dealer.send_multipart([protocol.encode_header(protocol.Opcode.ATTACH, 1),
                           msgspec.msgpack.encode(channel.attach_request())])
    assert dealer.poll(5000)
    _, status, _ = protocol.decode_header(dealer.recv_multipart()[0])
    assert status == protocol.Status.OK
    channel.attached()
    channel.spill = dealer.send_multipart


def test_attached_by_default_over_ipc_only(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    assert client.info["local_channels"] is True and is_local(client)
    assert client.server_stats()["local_sessions"] == 1
    plain = track.client(server.endpoint, local_channel=False)
    assert isinstance(plain.connection.transport, DealerTransport)
    assert plain.server_stats()["local_sessions"] == 1

    tcp = track.server(track.endpoint("tcp"))
    over_tcp = track.client(tcp.endpoint)
    assert over_tcp.info["local_channels"] is False and not is_local(over_tcp)
    with pytest.raises(BrokenConnection, match="local channel"):
        track.client(tcp.endpoint, local_channel=True)


def test_a_broker_without_local_channels(track: Tracker) -> None:
    server = track.server(local_channels=False)
    client = track.client(server.endpoint)
    assert not is_local(client) and client.info["local_channels"] is False
    with pytest.raises(BrokenConnection, match="refused a local channel"):
        track.client(server.endpoint, local_channel=True)
    client.create_topic("t")   # the refusal changed nothing for anyone
    assert client.list_topics() == ["t"]


def test_large_messages_spill_over_the_socket_in_order(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint, ring_bytes=MIN_CAPACITY, local_channel=True)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    bodies = [b"small-1", b"B" * 100_000, b"small-2", b"C" * 50_000, b"small-3"]
    for body in bodies:
        client.publish_nowait("t", body)
    client.flush()
    consumer = client.consume("q", prefetch=1)   # one message per push: big pushes spill
    got = []
    while len(got) < len(bodies):
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None
        got += batch.body_list()
        batch.ack()
    assert got == bodies
    stats = client.server_stats()
    assert stats["local_spills"] >= 2          # the broker spilled the two big pushes
    transport = client.connection.transport
    assert isinstance(transport, LocalTransport) and transport.channel.spills >= 1


def test_a_publish_larger_than_half_the_ring_warns_once_and_arrives(
        track: Tracker, caplog: pytest.LogCaptureFixture) -> None:
    # A numpy batch of 64 rows of 1 KiB is a ~69 KB publish frame: over half of a 64 KiB
    # ring, so it goes over the socket. That works, but slower, and nothing said so: the
    # client now warns once, naming a ring size that would hold it.
    import re

    import numpy as np

    server = track.server()
    client = track.client(server.endpoint, ring_bytes=MIN_CAPACITY, local_channel=True)
    client.create_topic("t")
    client.create_queue("q", max_message_size=1024)
    client.subscribe("t", "q")
    rows = np.arange(2 * 64 * 256, dtype=np.float32).reshape(2, 64, 256)
    with caplog.at_level("WARNING", logger="fastfanout.transport.local_channel"):
        client.publish_batch("t", rows[0])
        client.publish_batch("t", rows[1])
    warnings = [record.getMessage() for record in caplog.records
                if record.name == "fastfanout.transport.local_channel"]
    assert len(warnings) == 1, warnings
    found = re.search(r"a request of (\d+) bytes .* is larger than half this client's "
                      r"(\d+)-byte local channel ring.*connect\(ring_bytes=(\d+)\)",
                      warnings[0])
    assert found is not None, warnings[0]
    size, ring, advised = map(int, found.groups())
    assert ring == MIN_CAPACITY and size > ring // 2
    assert advised & (advised - 1) == 0 and advised // 2 >= size > advised // 4
    transport = client.connection.transport
    assert isinstance(transport, LocalTransport) and transport.channel.spills == 2
    consumer = client.consume("q", prefetch=128)
    got: list[np.ndarray] = []
    while sum(map(len, got)) < 128:
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None
        got.append(np.array(batch.as_array(np.float32, (256,))))
        batch.ack()
    assert np.array_equal(np.concatenate(got), rows.reshape(128, 256))


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_credit_worth_more_than_the_ring_is_pushed_through_it(track: Tracker,
                                                             flavour: str) -> None:
    # 300 bodies of 1 KiB with a prefetch of 300: the credit is worth ~310 KiB, the ring
    # is 64 KiB. The broker cuts the pushes to a quarter of the ring (about 15 messages
    # each: room for one always remains beside the frames the consumer holds in place)
    # instead of leasing the whole credit into one push sent around the ring over the
    # socket; every message comes, in order, and nothing spills.
    server = track.server()
    bodies = [b"%04d" % n + b"r" * 1020 for n in range(300)]
    admin = track.client(server.endpoint, local_channel=False)
    admin.create_queue("q", max_message_size=1024)
    admin.send_batch("q", bodies)

    def check(pushes: int) -> None:
        stats = admin.server_stats()
        assert stats["local_spills"] == 0, (repr(stats), pushes)
        assert stats["pushed_messages"] == 300 and pushes >= 300 * 1080 // (MIN_CAPACITY // 4)

    if flavour == "blocking":
        client = track.client(server.endpoint, ring_bytes=MIN_CAPACITY, local_channel=True)
        consumer = client.consume("q", prefetch=300)
        got: list[bytes] = []
        pushes = 0
        while len(got) < len(bodies):
            batch = consumer.next_batch(timeout=5.0)
            assert batch is not None
            pushes += 1
            got += batch.body_list()
            batch.ack()
        assert got == bodies
        check(pushes)
        return

    async def main() -> int:
        async with aio.connect(server.endpoint, ring_bytes=MIN_CAPACITY) as client:
            got = []
            pushes = 0
            async for batch in client.consume_batches("q", prefetch=300):
                pushes += 1
                got += batch.body_list()
                await batch.ack()
                if len(got) >= len(bodies):
                    break
            assert got == bodies
            return pushes

    check(asyncio.run(main()))


def test_a_client_that_does_not_read_is_queued_for_in_order(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    for number in range(20):
        client.create_queue(f"a-queue-with-a-longish-name-{number}")
    channel = LocalChannel.create(MIN_CAPACITY)
    with raw_dealer(server.endpoint) as dealer:
        try:
            attach_raw(dealer, channel)
            # 2,000 requests whose replies (~700 bytes each) overflow a 64 KiB ring unread
            payload = msgspec.msgpack.encode([[], {}])
            for request_id in range(2, 2002):
                frames = [protocol.encode_header(protocol.Opcode.LIST_QUEUES, request_id),
                          payload]
                while not channel.try_send(frames):
                    channel.read(0)   # nothing read: only wait for the broker to take some
            track.wait_until(lambda: server.counters["requests"] >= 2001, what="every request")
            assert client.server_stats()["local_ring_full"] >= 1
            answered = []
            while len(answered) < 2000:
                for reply in channel.read(100):
                    assert reply is not None
                    _, status, request_id = protocol.decode_header(reply[0])
                    assert status == protocol.Status.OK
                    answered.append(request_id)
            assert answered == list(range(2, 2002))
        finally:
            channel.close()


def test_a_send_waits_for_room_then_gives_up(track: Tracker) -> None:
    # a fake broker side that reads only when told to
    client_side = LocalChannel.create(MIN_CAPACITY)
    broker_side = LocalChannel.attach(client_side.attach_request())
    client_side.attached()
    transport = LocalTransport(DealerTransport(track.endpoint()), client_side, send_timeout=0.3)
    try:
        body = b"r" * 10_000
        sent = 0
        while client_side.try_send([body]):
            sent += 1
        with pytest.raises(PeerLost, match="no room"):
            transport.send([body])
        assert client_side.full == 1
        taken: list = []
        reader = threading.Timer(0.05, lambda: taken.extend(broker_side.read(100)))
        reader.start()
        transport.send([body, b"after room"])   # woken by the broker side's bell
        reader.join()
        assert len(taken) == sent >= 3
        assert broker_side.read(100) == [[body, b"after room"]]
    finally:
        transport.close()
        broker_side.close()


KILLED = textwrap.dedent("""
    import sys, time
    from fastfanout.client import connect
    client = connect(sys.argv[1])
    assert type(client.connection.transport).__name__ == "LocalTransport"
    consumer = client.consume("q", prefetch=10, visibility_timeout=60.0)
    got = 0
    while got < 10:
        got += len(consumer.next_batch(timeout=10.0))
    print("leased", got, flush=True)
    time.sleep(120)
""")


def test_a_killed_client_is_noticed_by_its_bell(track: Tracker) -> None:
    # heartbeats would take 60 s here: only the hung-up bell can release the leases
    server = track.server(heartbeat_interval=30.0, heartbeat_timeout=60.0)
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send_batch("q", [b"m%d" % i for i in range(10)])
    process = track.process(["-c", KILLED, server.endpoint])
    assert process.stdout is not None
    assert process.stdout.readline().split() == [b"leased", b"10"]
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    again = client.receive("q", max_messages=10, wait=10.0)
    while len(again) < 10:
        again += client.receive("q", max_messages=10, wait=5.0)
    assert all(m.receive_count == 2 for m in again)
    assert client.server_stats()["local_peer_gone"] == 1


def test_a_killed_broker_is_a_clear_error_then_reconnect(track: Tracker) -> None:
    endpoint = track.endpoint()
    broker = track.broker_process(endpoint)
    client = track.client(endpoint, timeout=30.0)
    assert is_local(client)
    client.create_topic("t")
    broker.send_signal(signal.SIGKILL)
    broker.wait(10)
    with pytest.raises(BrokenConnection, match="gone"):   # long before the 30 s timeout
        client.list_topics()
    track.broker_process(endpoint)
    assert client.list_topics() == [] and is_local(client)


def test_bad_attach_requests_are_refused(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    unsealed = os.memfd_create("unsealed")   # a ring that could shrink under the broker
    os.ftruncate(unsealed, 256 + MIN_CAPACITY)
    made = LocalChannel.create(MIN_CAPACITY)
    good = made.attach_request()
    cases = [
        ([], "malformed_frame"),
        ([msgspec.msgpack.encode({"directory": 7})], "malformed_frame"),
        ([msgspec.msgpack.encode({"directory": "/dev/shm/fastfanout-x"})],
         "malformed_frame"),   # the old form: nothing is opened by name any more
        ([msgspec.msgpack.encode({**good, "to_broker": unsealed})], "invalid_argument"),
        ([msgspec.msgpack.encode({**good, "pid": 2 ** 22 + 12345})], "invalid_argument"),
    ]
    made.close()
    with raw_dealer(server.endpoint) as dealer:
        for request_id, (payload, code) in enumerate(cases, 1):
            dealer.send_multipart(
                [protocol.encode_header(protocol.Opcode.ATTACH, request_id), *payload])
            assert dealer.poll(5000)
            reply = dealer.recv_multipart()
            _, status, answered = protocol.decode_header(reply[0])
            assert (status, answered) == (protocol.Status.ERROR, request_id)
            assert msgspec.msgpack.decode(reply[1])[0] == code
        # a real channel attaches over the same raw socket, and is then used
        channel = LocalChannel.create(MIN_CAPACITY)
        try:
            attach_raw(dealer, channel)
            channel.try_send([protocol.encode_header(protocol.Opcode.LIST_TOPICS, 100),
                              msgspec.msgpack.encode([[], {}])])
            track.wait_until(lambda: channel.incoming.pending(), what="the reply in the ring")
            [reply] = channel.read(1)
            assert protocol.decode_header(reply[0])[1:] == (protocol.Status.OK, 100)
        finally:
            channel.close()
    os.close(unsealed)
    assert client.list_topics() == []
    assert client.server_stats()["error.invalid_argument"] == 2


def test_attach_keeps_rings_and_bells_apart(track: Tracker) -> None:
    # until 2026-12-05 ATTACH took one ring for both directions (the broker then read its
    # own replies as requests, which answered each other for good: a core busy from one
    # request), one pipe for both bells, another session's ring, and a pid past a pid_t
    # (an `internal` error)
    server = track.server()
    client = track.client(server.endpoint, local_channel=False)
    first, made = LocalChannel.create(MIN_CAPACITY), LocalChannel.create(MIN_CAPACITY)
    good = made.attach_request()
    rings = {"to_broker": made.outgoing.fileno(), "to_client": made.incoming.fileno()}
    with raw_dealer(server.endpoint) as attached, raw_dealer(server.endpoint) as dealer:
        try:
            attach_raw(attached, first)
            cases = [
                {**good, "to_client": rings["to_broker"]},
                {**good, "to_broker": rings["to_client"]},
                {**good, "client_bell": made.peer_bell.fd},   # the broker's own bell
                {**good, "to_broker": first.outgoing.fileno()},   # another session's
                {**good, "to_client": first.incoming.fileno()},
                {**good, "pid": 2 ** 31},
                {**good, "pid": 2 ** 64 - 1},
            ]
            for request_id, request in enumerate(cases, 1):
                dealer.send_multipart([protocol.encode_header(protocol.Opcode.ATTACH,
                                                              request_id),
                                       msgspec.msgpack.encode(request)])
                assert dealer.poll(5000)
                reply = dealer.recv_multipart()
                assert protocol.decode_header(reply[0])[1:] == (protocol.Status.ERROR,
                                                                 request_id)
                assert msgspec.msgpack.decode(reply[1])[0] == "invalid_argument", request
            assert client.server_stats()["local_sessions"] == 1   # the first one only
            requests = server.counters["requests"]
            # the first channel still works, and the broker is idle between requests
            first.try_send([protocol.encode_header(protocol.Opcode.LIST_TOPICS, 100),
                            msgspec.msgpack.encode([[], {}])])
            track.wait_until(lambda: first.incoming.pending(), what="the reply in the ring")
            [reply] = first.read(1)
            assert protocol.decode_header(reply[0])[1:] == (protocol.Status.OK, 100)
            assert server.counters["requests"] - requests < 10
            # the refused request changed nothing: the same rings attach on their own
            dealer.send_multipart([protocol.encode_header(protocol.Opcode.ATTACH, 200),
                                   msgspec.msgpack.encode(good)])
            assert dealer.poll(5000)
            assert protocol.decode_header(dealer.recv_multipart()[0])[1] == protocol.Status.OK
            made.attached()
        finally:
            first.close()
            made.close()
    assert client.server_stats().get("error.internal", 0) == 0


def test_serve_can_turn_local_channels_off(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.broker_process(endpoint, "--no-local-channels")
    client = track.client(endpoint)
    assert client.info["local_channels"] is False and not is_local(client)
    client.create_topic("t")
    assert client.list_topics() == ["t"]


def test_a_channel_that_cannot_be_made_leaves_the_socket(track: Tracker, monkeypatch) -> None:
    server = track.server()

    def no_room(ring_bytes: int) -> LocalChannel:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LocalChannel, "create", staticmethod(no_room))
    client = track.client(server.endpoint)
    assert not is_local(client)
    client.create_topic("t")
    assert client.list_topics() == ["t"]
    with pytest.raises(BrokenConnection, match="No space left"):
        track.client(server.endpoint, local_channel=True)
    assert server.counters["local_channels"] == 0


@pytest.mark.parametrize("options", [{"ring_bytes": 1000}, {"ring_bytes": 1 << 15},
                                     {"ring_bytes": 1 << 31}, {"ring_bytes": 65536.0},
                                     {"local_channel": "yes"}])
def test_bad_channel_options_are_refused_up_front(track: Tracker, options) -> None:
    server = track.server()
    with pytest.raises(InvalidArgument):
        track.client(server.endpoint, **options)
    assert server.counters["sessions"] == 0


# -- the asyncio client -------------------------------------------------------------------


def test_asyncio_client_attaches_and_keeps_order_through_spills(track: Tracker) -> None:
    server = track.server()
    tcp = track.server(track.endpoint("tcp"))

    async def main() -> None:
        async with aio.connect(server.endpoint, ring_bytes=MIN_CAPACITY) as client:
            assert isinstance(client.connection.transport, AsyncLocalTransport)
            await client.create_topic("t")
            await client.create_queue("q")
            await client.subscribe("t", "q")
            bodies = [b"small-1", b"B" * 100_000, b"small-2", b"C" * 50_000]
            for body in bodies:     # the big ones spill over the socket, both ways
                await client.publish("t", body)
            got = []
            async for message in client.consume("q", prefetch=1):
                got.append(message.body)
                message.ack()
                if len(got) == len(bodies):
                    break
            assert got == bodies
            assert client.connection.transport.channel.spills == 2
        async with aio.connect(server.endpoint, local_channel=False) as plain:
            assert isinstance(plain.connection.transport, AsyncDealerTransport)
        async with aio.connect(tcp.endpoint) as over_tcp:
            assert isinstance(over_tcp.connection.transport, AsyncDealerTransport)
        with pytest.raises(BrokenConnection, match="local channel"):
            await aio.connect(tcp.endpoint, local_channel=True)

    asyncio.run(main())
    assert server.counters["local_spills"] >= 2


def test_asyncio_client_waits_for_room_in_order(track: Tracker) -> None:
    server = track.server()

    async def main() -> None:
        async with aio.connect(server.endpoint, ring_bytes=MIN_CAPACITY) as client:
            await client.create_queue("q")
            bodies = [b"%05d" % i + b"." * 250 for i in range(10_000)]
            futures = [client.send_batch_nowait("q", bodies[i:i + 100])
                       for i in range(0, len(bodies), 100)]   # ~2.5 MB through 64 KiB
            for future in futures:
                await future
            transport = client.connection.transport
            assert isinstance(transport, AsyncLocalTransport) and transport.channel.full >= 1
            got = []
            while len(got) < len(bodies):
                got += [m.body for m in await client.receive("q", max_messages=1000)]
            assert got == bodies

    asyncio.run(main())


def test_asyncio_client_sees_a_killed_broker(track: Tracker) -> None:
    endpoint = track.endpoint()
    broker = track.broker_process(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=30.0) as client:
            assert isinstance(client.connection.transport, AsyncLocalTransport)
            await client.create_topic("t")
            broker.send_signal(signal.SIGKILL)
            broker.wait(10)
            with pytest.raises(BrokenConnection):   # long before the 30 s timeout
                await client.list_topics()
            track.broker_process(endpoint)
            assert await client.list_topics() == []   # reconnected: a new channel
            assert isinstance(client.connection.transport, AsyncLocalTransport)

    asyncio.run(main())


def test_a_malformed_record_ends_only_its_session(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    channel = LocalChannel.create(MIN_CAPACITY)
    ring = channel.outgoing.fileno()
    with raw_dealer(server.endpoint) as dealer:
        try:
            attach_raw(dealer, channel)
            # a record claiming 2 frames and a length past the end of the ring, published
            os.pwrite(ring, struct.pack("<II", 2, 1 << 20), 256)
            os.pwrite(ring, struct.pack("<Q", 8), 64)
            channel.ring_peer()
            track.wait_until(lambda: server.counters["local_malformed"] == 1,
                             what="the refusal")
            track.wait_until(lambda: client.server_stats()["local_sessions"] == 1,
                             what="the session's end")
            assert client.list_topics() == []                  # everyone else is served
        finally:
            channel.close()


def test_pushes_wait_for_room_in_the_ring_and_keep_their_order(track: Tracker) -> None:
    # Pushes are written into the ring in place while it has room for one (a quarter of
    # the ring); without, the broker leases nothing more: the messages stay visible in
    # the queue, nothing waits in front of the ring with its lease running, and the
    # client's read that makes room rings the broker, which pushes the rest in order.
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    channel = LocalChannel.create(MIN_CAPACITY)   # 64 KiB: two pushes of ~25 KB fit
    sent: list[bytes] = []

    def push(count: int) -> None:   # one send, so one push of ``count`` records
        bodies = [b"%05d" % (len(sent) + i) + b"-" * 100 for i in range(count)]
        client.send_batch("q", bodies)
        sent.extend(bodies)

    got: list[bytes] = []

    def take(limit: int) -> bool:
        """Read up to ``limit`` pushes into ``got``; True once everything sent is in."""
        for message in channel.read(limit):
            assert message is not None   # no push here exceeds half the ring
            _, status, request_id = protocol.decode_header(message[0])
            assert status == protocol.Status.PUSH and request_id == 7
            got.extend(r.body for r in codec.decode_batch(message[1]))
        return len(got) >= len(sent)

    with raw_dealer(server.endpoint) as dealer:
        try:
            attach_raw(dealer, channel)
            consume = [protocol.encode_header(protocol.Opcode.CONSUME, 7),
                       msgspec.msgpack.encode([[], {"queue": "q", "prefetch": 100_000}])]
            assert channel.try_send(consume)
            track.wait_until(channel.incoming.pending, what="the consume reply")
            [reply] = channel.read(1)
            assert protocol.decode_header(reply[0])[1:] == (protocol.Status.OK, 7)
            push(1)                       # small, in the ring
            for _ in range(4):
                push(150)                 # ~16 KB pushes until the ring has no room
            track.wait_until(lambda: client.stats().queues["q"].visible > 0,
                             what="messages left in the queue")
            stats = client.server_stats()
            assert stats["local_ring_full"] == 0 and stats["local_spills"] == 0
            take(1)                       # the small one
            push(1)                       # after the others, whatever room there is
            track.wait_until(lambda: take(100), what="every push")
            assert got == sent
            assert client.server_stats()["local_ring_full"] == 0
        finally:
            channel.close()


# -- a client must not be able to harm the broker through its channel ---------------------

TRUNCATE = textwrap.dedent("""
    import os, sys
    pid, descriptors = sys.argv[1], sys.argv[2:]
    for fd in descriptors:   # another process of the same user reaches the client's rings
        with open(f"/proc/{pid}/fd/{fd}", "r+b") as ring:
            try:
                os.ftruncate(ring.fileno(), 0)
                print("truncated", flush=True)
            except PermissionError:
                print("refused", flush=True)
""")


def consume_request(request_id: int, queue: str, prefetch: int) -> list[bytes]:
    return [protocol.encode_header(protocol.Opcode.CONSUME, request_id),
            msgspec.msgpack.encode([[], {"queue": queue, "prefetch": prefetch}])]


def test_truncating_a_ring_cannot_kill_the_broker(track: Tracker) -> None:
    # Were a ring's file cut short under the broker's mapping, the broker's next write
    # into it (a push) or read from it would die of SIGBUS, taking every session along.
    endpoint = track.endpoint()
    broker = track.broker_process(endpoint)
    other = track.client(endpoint)
    other.create_queue("q")
    channel = LocalChannel.create(MIN_CAPACITY)
    rings = [channel.outgoing.fileno(), channel.incoming.fileno()]
    with raw_dealer(endpoint) as dealer:
        try:
            attach_raw(dealer, channel)
            for fd in rings:
                with pytest.raises(PermissionError):
                    os.ftruncate(fd, 0)
            done = subprocess.run(
                [sys.executable, "-c", TRUNCATE, str(os.getpid()), *map(str, rings)],
                capture_output=True, timeout=30)
            assert done.stdout.split() == [b"refused", b"refused"], done.stderr
            # the broker reads the ring it was given and pushes into the other
            assert channel.try_send(consume_request(7, "q", 100))
            other.send_batch("q", [b"after-%d" % i for i in range(50)])
            got: list[bytes] = []

            def pushed() -> bool:
                for message in channel.read(100):
                    assert message is not None
                    status = protocol.decode_header(message[0])[1]
                    if status == protocol.Status.PUSH:
                        got.extend(r.body for r in codec.decode_batch(message[1]))
                return len(got) == 50

            track.wait_until(pushed, what="the pushes")
            assert got == [b"after-%d" % i for i in range(50)]
        finally:
            channel.close()
    assert broker.poll() is None
    assert other.list_queues() == ["q"] and other.server_stats()["local_sessions"] == 1


def test_a_session_that_never_reads_is_ended_at_its_backlog_bound(track: Tracker) -> None:
    bound = 256 << 10
    server = track.server(local_backlog_bytes=bound)
    client = track.client(server.endpoint)
    client.create_queue("q")
    for number in range(20):
        client.create_queue(f"a-queue-with-a-longish-name-{number}")
    channel = LocalChannel.create(MIN_CAPACITY)
    with raw_dealer(server.endpoint) as dealer:
        try:
            attach_raw(dealer, channel)
            assert channel.try_send(consume_request(7, "q", 10))
            client.send_batch("q", [b"m%d" % i for i in range(10)])
            track.wait_until(lambda: channel.incoming.used > 200, what="the push")
            # requests whose replies (~1 KB each) it never reads: 2 MB in all
            payload = msgspec.msgpack.encode([[], {}])
            overflowed = lambda: server.counters["local_backlog_overflow"] > 0  # noqa: E731
            for request_id in range(100, 2100):
                frames = [protocol.encode_header(protocol.Opcode.LIST_QUEUES, request_id),
                          payload]
                while not overflowed() and not channel.try_send(frames):
                    track.wait_until(lambda: channel.outgoing.used < MIN_CAPACITY // 2
                                     or overflowed(), what="room")
                if overflowed():
                    break
            track.wait_until(overflowed, what="the backlog's bound")
            track.wait_until(lambda: client.server_stats()["local_sessions"] == 1,
                             what="the session's end")   # the one left is client's
            stats = client.server_stats()
            assert stats["slow_client"] == 1 and stats["local_backlog_overflow"] == 1
            assert 0 < stats["local_backlog_peak_bytes"] <= bound
            assert stats["local_backlog_bytes"] == 0 and stats["connections"] == 1
            with pytest.raises(PeerGone):   # the broker closed its side
                track.wait_until(lambda: bool(channel.bell.drain()), what="the hang-up")
            # its leases were released at once (visibility was 30 s): all ten come back
            again = client.receive("q", max_messages=10, wait=5.0)
            assert sorted(m.body for m in again) == sorted(b"m%d" % i for i in range(10))
        finally:
            channel.close()


def test_local_backlog_bytes_must_be_a_positive_int(track: Tracker) -> None:
    for bad in (0, -1, 1.5, "1"):
        with pytest.raises(InvalidArgument, match="local_backlog_bytes"):
            Server(track.endpoint(), local_backlog_bytes=bad)


ATTACH_THEN_VANISH = textwrap.dedent("""
    import os, subprocess, sys
    import msgspec, zmq
    from fastfanout.wire import protocol
    from fastfanout._ext.shmring import MIN_CAPACITY
    from fastfanout.transport.local_channel import LocalChannel
    dealer = zmq.Context().socket(zmq.DEALER)
    dealer.connect(sys.argv[1])
    dealer.send_multipart([protocol.encode_header(protocol.Opcode.HELLO, 1),
                           msgspec.msgpack.encode({"heartbeat": False})])
    dealer.recv_multipart()
    channel = LocalChannel.create(MIN_CAPACITY)
    request = channel.attach_request()
    dealer.send_multipart([protocol.encode_header(protocol.Opcode.ATTACH, 2),
                           msgspec.msgpack.encode(request)])
    assert protocol.decode_header(dealer.recv_multipart()[0])[1] == protocol.Status.OK
    if sys.argv[2] == "child-keeps-the-bell":   # a child inherits the bell's write end
        child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                 stdin=subprocess.PIPE, pass_fds=[channel.peer_bell.fd])
        print(child.pid, flush=True)
    else:
        print(0, flush=True)
    os._exit(0)   # gone without a word: no attached(), no BYE, no heartbeats
""")


@pytest.mark.parametrize("how", ["exits", "child-keeps-the-bell"])
def test_a_client_gone_right_after_attach_is_ended(track: Tracker, how: str) -> None:
    server = track.server(heartbeat_interval=30.0, heartbeat_timeout=600.0)
    client = track.client(server.endpoint)
    process = track.process(["-c", ATTACH_THEN_VANISH, server.endpoint, how])
    assert process.stdout is not None
    child = int(process.stdout.readline())
    try:
        process.wait(30)
        track.wait_until(lambda: client.server_stats()["connections"] == 1,
                         what="the vanished client's session to end")
        stats = client.server_stats()
        assert stats["local_sessions"] == 1 and stats["local_peer_gone"] == 1
        assert stats["local_channels"] == 2
    finally:
        if child:
            os.kill(child, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(child, 0)


KILLED_IN_CONNECT = textwrap.dedent("""
    import os, signal, sys
    from fastfanout.client import connect
    from fastfanout.transport.local_channel import LocalChannel
    made = LocalChannel.create
    def create_then_stop(ring_bytes):
        channel = made(ring_bytes)
        os.kill(os.getpid(), signal.SIGSTOP)   # the test looks, then kills it here
        return channel
    LocalChannel.create = staticmethod(create_then_stop)
    connect(sys.argv[1], local_channel=True)
""")


def test_a_client_killed_in_connect_leaves_nothing_behind(track: Tracker) -> None:
    server = track.server()
    process = track.process(["-c", KILLED_IN_CONNECT, server.endpoint])

    def stopped() -> bool:
        with open(f"/proc/{process.pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "T"

    track.wait_until(stopped, what="the client to stop inside connect()")
    # between making its channel and attaching it: what it holds has no name anywhere
    links = [os.readlink(f"/proc/{process.pid}/fd/{fd}")
             for fd in os.listdir(f"/proc/{process.pid}/fd")]
    assert sum(link.startswith("/memfd:fastfanout-") for link in links) == 2
    assert not [link for link in links if "fastfanout-" in link
                and not link.startswith("/memfd:")]
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    client = track.client(server.endpoint)   # the next connect has nothing to sweep
    assert is_local(client) and client.server_stats()["local_channels"] == 1
