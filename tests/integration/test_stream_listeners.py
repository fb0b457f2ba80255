"""Stream listeners against a real broker: live on return, other peers' frames, slow ones."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from typing import Any
from typing import Any as Tracker

import pytest
import zmq
from conftest import wait_until

import fastfanout
from fastfanout import aio
from fastfanout.errors import InvalidArgument
from fastfanout.server.loop import Server
from fastfanout.server.streams import PROBE_PREFIX
from fastfanout.transport.sockets import MAX_LISTENER_FRAME_BYTES, MAX_SUBSCRIPTION_BYTES

TRIALS = 60
WINDOW = 100   # batches the slow-listener test publishes before the fast one reads them
DEADLINE = 10.0


def test_listen_returns_once_the_subscription_is_live(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("t")
    for trial in range(TRIALS):
        with client.listen("t") as listener:
            client.publish("t", b"%d" % trial)   # at once: no wait for the subscription
            batch = listener.recv_batch(DEADLINE)
            assert batch is not None, f"trial {trial}: the first message was lost"
            assert batch[0].body == b"%d" % trial and listener.gaps == 0
    client.close()


def test_asyncio_listen_returns_once_the_subscription_is_live(track: Tracker,
                                                               endpoint: str) -> None:
    track.server(endpoint)

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as client:
            await client.create_topic("t")
            for trial in range(TRIALS):
                async with client.listen("t") as listener:
                    await client.publish("t", b"%d" % trial)
                    batch = await listener.recv_batch(DEADLINE)
                    assert batch is not None, f"trial {trial}: the first message was lost"
                    assert batch[0].body == b"%d" % trial
            listener = await client.listen("t")   # awaited instead of entered
            try:
                client.publish_nowait("t", b"now")
                batch = await listener.recv_batch(DEADLINE)
                assert batch is not None and batch[0].body == b"now"
            finally:
                listener.close()

    asyncio.run(main())


class RawPeer:
    """A hand-made ZMTP 3.0 SUB peer over tcp: sends whatever frames it is given."""

    def __init__(self, endpoint: str) -> None:
        host, port = endpoint.removeprefix("tcp://").rsplit(":", 1)
        self._socket = socket.create_connection((host, int(port)), timeout=DEADLINE)
        greeting = b"\xff" + bytes(8) + b"\x7f\x03\x00" + b"NULL".ljust(20, b"\x00") + bytes(32)
        self._socket.sendall(greeting)
        self._exactly(64)
        ready = b"\x05READY\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
        self._socket.sendall(bytes([0x04, len(ready)]) + ready)
        self._frame()   # the broker's READY

    def send(self, frame: bytes) -> None:
        self._socket.sendall(bytes([0x00, len(frame)]) + frame)

    def recv(self) -> list[bytes]:
        frames = []
        while True:
            flags, body = self._frame()
            frames.append(body)
            if not flags & 0x01:
                return frames

    def _frame(self) -> tuple[int, bytes]:
        flags = self._exactly(1)[0]
        size = (struct.unpack(">Q", self._exactly(8))[0] if flags & 0x02
                else self._exactly(1)[0])
        return flags, self._exactly(size)

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._socket.recv(size - len(data))
            assert chunk, "the broker closed the connection"
            data += chunk
        return data

    def close(self) -> None:
        self._socket.close()


def test_other_peers_frames_leave_listeners_subscribed(track: Tracker) -> None:
    endpoint = track.endpoint("tcp")
    server = track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("t")
    everything = client.listen(">")
    exact = client.listen("t")
    track.closeables += [everything, exact]
    # a stock XSUB sending frames that are neither subscriptions nor unsubscriptions
    context = zmq.Context()
    xsub = context.socket(zmq.XSUB)
    xsub.setsockopt(zmq.LINGER, 0)
    xsub.connect(server.stream_endpoint)
    # a peer that unsubscribes what it never subscribed (libzmq's XSUB would not send it)
    raw = RawPeer(server.stream_endpoint)
    try:
        for frame in (b"\x02", b""):
            xsub.send(frame)
        xsub.send(b"\x01" + PROBE_PREFIX + b"xsub")
        assert xsub.poll(DEADLINE * 1000), "no probe: the broker did not read the frames"
        assert xsub.recv_multipart() == [PROBE_PREFIX + b"xsub", b""]
        for frame in (b"\x00", b"\x00t", b"\x00tt", b"\x02", b""):
            raw.send(frame)
        raw.send(b"\x01" + PROBE_PREFIX + b"raw")
        assert raw.recv() == [PROBE_PREFIX + b"raw", b""]
        client.publish("t", b"after")
        for listener in (everything, exact):   # others' probes are not the user's
            batch = listener.recv_batch(DEADLINE)
            assert batch is not None and batch[0].body == b"after"
            assert listener.recv_batch(0.05) is None
        stats = client.server_stats()
        assert stats["stream_bad_frames"] == 4
        assert stats["stream_unknown_unsubscribes"] == 3
        assert stats["stream_subscriptions"] == 2
    finally:
        raw.close()
        xsub.close()
        context.term()
    client.close()


def test_a_listener_past_max_stream_subscriptions_is_cut(track: Tracker,
                                                          endpoint: str) -> None:
    # Until 2026-12-05 one listener connection could subscribe without end: libzmq keeps
    # every prefix in the XPUB's filter, and the broker one record per prefix.
    server = track.server(endpoint, max_stream_subscriptions=4)
    client = track.client(endpoint)
    client.create_topic("t")
    listener = client.listen("t")   # a listen() holds one prefix (its probe is gone)
    track.closeables.append(listener)
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RECONNECT_IVL, -1)   # once cut, it stays away
    sub.connect(server.stream_endpoint)
    try:
        for prefix in (b"p0", b"p1", b"p2"):
            sub.subscribe(prefix)
        sub.subscribe(PROBE_PREFIX + b"sub")   # the fourth: exactly at the limit
        assert sub.poll(DEADLINE * 1000), "no probe: a subscription at the limit was refused"
        assert sub.recv_multipart() == [PROBE_PREFIX + b"sub", b""]
        stats = client.server_stats()
        assert stats["stream_subscriptions"] == 4   # t, p0, p1, p2
        assert stats["stream_listener_peers"] == 2
        assert "stream_subscriptions_refused" not in stats
        sub.subscribe(b"p3")   # one over
        wait_until(lambda: client.server_stats().get("stream_listeners_cut") == 1,
                   what="the connection cut")
        wait_until(lambda: client.server_stats()["stream_subscriptions"] == 1,
                   what="libzmq's unsubscriptions of the cut connection")
        stats = client.server_stats()
        assert stats["stream_subscriptions_refused"] == 1
        assert stats["stream_listener_peers"] == 1
        client.create_topic("p0")
        client.publish("p0", b"lost")   # nobody listens to it now
        client.publish("t", b"after")   # the other listener is untouched
        batch = listener.recv_batch(DEADLINE)
        assert batch is not None and batch[0].body == b"after" and listener.gaps == 0
        assert sub.poll(100) == 0
    finally:
        sub.close()
        context.term()
    client.close()


def test_listener_records_end_with_their_connections(track: Tracker, endpoint: str) -> None:
    # Until 2026-12-05 the broker kept a record per listener connection that ever
    # subscribed, emptied but never removed: one per connection, for ever.
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("t")
    listeners = [client.listen("t") for _ in range(5)]
    stats = client.server_stats()
    assert stats["stream_listener_peers"] == 5 and stats["stream_subscriptions"] == 5
    for listener in listeners:
        listener.close()
    wait_until(lambda: client.server_stats()["stream_subscriptions"] == 0,
               what="the listeners' unsubscriptions")
    assert client.server_stats()["stream_listener_peers"] == 0
    client.close()


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, float("nan"), "10", 2**31, None])
def test_server_refuses_a_bad_max_stream_subscriptions(track: Tracker, bad: object) -> None:
    with pytest.raises(InvalidArgument, match="max_stream_subscriptions"):
        Server(track.endpoint(), max_stream_subscriptions=bad)


def test_a_slow_listener_loses_alone_and_learns_the_tail(track: Tracker,
                                                         endpoint: str) -> None:
    server = track.server(endpoint, stream_high_water_mark=2 * WINDOW)
    client = track.client(endpoint)
    client.create_topic("t")
    slow = client.listen("t", high_water_mark=10)   # never reads while messages flow
    fast = client.listen("t")                       # queues up to 100,000 batches
    track.closeables += [slow, fast]
    # 16 MB: far more than the slow one's queues (3 MB) and socket buffers (4 MB) hold
    count, body = 1000, bytes(16 * 1024)
    sequences: list[int] = []
    for sent in range(WINDOW, count + 1, WINDOW):
        for _ in range(WINDOW):
            client.publish("t", body)
        while len(sequences) < sent:   # the fast one keeps up: never WINDOW behind
            batch = fast.recv_batch(DEADLINE)
            assert batch is not None
            sequences += [message.sequence for message in batch]
    assert sequences == list(range(1, count + 1)) and fast.gaps == 0
    last = 0
    deadline = time.monotonic() + DEADLINE
    while slow.received + slow.gaps < count:   # the tail is counted on a beacon
        assert time.monotonic() < deadline, (slow.received, slow.gaps)
        batch = slow.recv_batch(0.1)
        if batch is not None:
            last = batch[-1].sequence
    assert slow.received + slow.gaps == count and slow.gaps > 0
    assert last < count   # the end of the burst was lost: only the beacon told
    stats = client.server_stats()
    assert stats["stream_messages"] == count and stats.get("stream_dropped", 0) == 0
    assert stats["stream_beacons"] >= 1
    assert server.counters["stream_probes"] == 2
    client.close()


def test_wait_policy_drops_for_everyone_and_counts(track: Tracker, endpoint: str) -> None:
    track.server(endpoint, slow_listener="wait", stream_wait=0.01, stream_high_water_mark=10)
    client = track.client(endpoint)
    client.create_topic("t")
    slow = client.listen("t", high_water_mark=10)
    fast = client.listen("t")
    track.closeables += [slow, fast]
    count = 200
    for _ in range(count):
        client.publish("t", bytes(64 * 1024))
    dropped = client.server_stats()["stream_dropped.wait"]
    assert 0 < dropped < count   # the broker waited, then dropped for everyone (counted)
    while slow.recv_batch(0.3) is not None:
        pass   # the slow one catches up: the stream (its beacons too) flows again
    deadline = time.monotonic() + DEADLINE
    while fast.received + fast.gaps < count:
        assert time.monotonic() < deadline, (fast.received, fast.gaps)
        fast.recv_batch(0.1)
    assert fast.received == count - dropped and fast.gaps == dropped
    client.close()


def _reading(track: Tracker, read: Any) -> tuple[threading.Thread, list[BaseException]]:
    """``read()`` in a thread of its own, started: (the thread, what it raised)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            read()
        except BaseException as exc:   # what the reader saw, for the test to assert
            errors.append(exc)

    reader = threading.Thread(target=run)
    reader.start()
    track.wait_until(lambda: reader.is_alive(), what="the reader waiting")
    return reader, errors


def test_a_listener_read_after_close_raises_closed(track: Tracker) -> None:
    # until 2026-12-05 a read after close() (or under it, from another thread or task)
    # raised pyzmq's ZMQError, or cancelled the reading task
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    listener = client.listen("t")
    reader, errors = _reading(track, lambda: listener.recv_batch(timeout=30.0))
    listener.close()
    reader.join(10.0)
    assert not reader.is_alive()
    assert [type(error) for error in errors] == [fastfanout.Closed]
    with pytest.raises(fastfanout.Closed):
        listener.recv_batch(timeout=0.1)
    with pytest.raises(fastfanout.Closed):
        next(iter(listener))

    async def main() -> None:
        aclient = await aio.connect(server.endpoint, timeout=5.0)
        alistener = await aclient.listen("t")
        waiting = asyncio.create_task(alistener.recv_batch(timeout=30.0))
        await asyncio.sleep(0)   # the task starts its read
        alistener.close()
        with pytest.raises(fastfanout.Closed):
            await waiting
        with pytest.raises(fastfanout.Closed):
            await alistener.recv_batch(timeout=0.1)
        await aclient.close()

    asyncio.run(main())


def test_a_listener_is_closed_with_its_client(track: Tracker) -> None:
    # until 2026-12-05 a listener outlived the client that made it: a read waited for
    # ever (``c.listen("t"); c.close(); next(listener)``) and its socket stayed open
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    waiting, idle = client.listen("t"), client.listen("t")
    reader, errors = _reading(track, lambda: next(waiting))
    client.close()
    reader.join(10.0)
    assert not reader.is_alive(), "the read went on after its client closed"
    assert [type(error) for error in errors] == [fastfanout.Closed]
    for listener in (waiting, idle):
        with pytest.raises(fastfanout.Closed):
            listener.recv_batch(timeout=0.1)
        assert listener.closed

    async def main() -> None:
        aclient = await aio.connect(server.endpoint, timeout=5.0)
        alistener = await aclient.listen("t")
        reading = asyncio.create_task(alistener.recv_batch(timeout=30.0))
        await asyncio.sleep(0)   # the task starts its read
        await aclient.close()
        with pytest.raises(fastfanout.Closed):
            await asyncio.wait_for(reading, 10.0)
        with pytest.raises(fastfanout.Closed):
            await alistener.recv_batch(timeout=0.1)

    asyncio.run(main())


def test_a_subscription_past_max_subscription_bytes_drops_only_its_listener(
        track: Tracker, endpoint: str) -> None:
    # Until 2026-12-05 the XPUB took frames of any size: libzmq keeps a node per byte of
    # a prefix, and one subscription of 10 MB stalled the broker for seconds.
    server = track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("t")
    listener = client.listen("t")
    track.closeables.append(listener)
    context = zmq.Context()
    subs = [context.socket(zmq.SUB) for _ in range(3)]
    try:
        for sub in subs:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.RECONNECT_IVL, -1)
            sub.connect(server.stream_endpoint)
        subs[0].subscribe(b"a" * MAX_SUBSCRIPTION_BYTES)   # a prefix exactly at it
        wait_until(lambda: client.server_stats()["stream_subscriptions"] == 2,
                   what="the subscription at the limit")
        subs[1].subscribe(b"b" * (MAX_SUBSCRIPTION_BYTES + 1))   # one byte over: refused
        wait_until(lambda: client.server_stats().get("stream_listeners_cut") == 1,
                   what="the listener over the limit cut")
        subs[2].subscribe(b"c" * MAX_LISTENER_FRAME_BYTES)   # past libzmq's frame limit
        wait_until(lambda: client.server_stats().get("stream_disconnects") == 2,
                   what="both listeners over the limits dropped")
        stats = client.server_stats()
        assert stats["stream_subscriptions_refused"] == 1
        assert stats["stream_subscriptions"] == 2   # the others stay
        client.publish("t", b"after")
        batch = listener.recv_batch(DEADLINE)
        assert batch is not None and batch[0].body == b"after"
    finally:
        for sub in subs:
            sub.close()
        context.term()
    client.close()
