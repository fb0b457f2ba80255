"""The broker's socket side under misbehaving peers: slow readers, silent sessions,
planted lock files, the umask, oversized requests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from typing import Any as Tracker

import msgspec
import pytest
import zmq

from fastfanout import aio, errors
from fastfanout.errors import InvalidArgument, RequestTooLarge, UnsafeLockFile
from fastfanout.server.loop import Server
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status


def _raw_dealer(context: zmq.Context[Any], endpoint: str, **options: int) -> zmq.Socket[Any]:
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        dealer.setsockopt(getattr(zmq, name), value)
    dealer.connect(endpoint)
    return dealer


_CALL = msgspec.msgpack.encode([[], {}])


# -- a client that reads nothing --------------------------------------------------------


def test_a_client_that_reads_nothing_never_stalls_the_others(track: Tracker) -> None:
    server = track.server(max_queued_replies=50)
    # a broker that waited on the flooder would wait as long as it does, for ever: no
    # call may take 5 s (a loaded 2-core machine takes a few tenths), none time out
    client = track.client(server.endpoint, local_channel=False, timeout=30.0)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    stop = threading.Event()
    sent = [0]

    def flood() -> None:
        # sends requests as fast as the broker takes them and never reads a reply
        context = zmq.Context()
        dealer = _raw_dealer(context, server.endpoint, RCVHWM=1, RCVBUF=4096)
        try:
            header = protocol.encode_header
            while not stop.is_set():
                try:
                    dealer.send_multipart([header(Opcode.LIST_TOPICS, sent[0] + 1), _CALL],
                                          zmq.NOBLOCK)
                    sent[0] += 1
                except zmq.Again:
                    time.sleep(0.001)
        finally:
            dealer.close()
            context.term()

    flooder = threading.Thread(target=flood, name="raw-flood")
    flooder.start()
    slowest = 0.0
    calls = 0
    try:
        deadline = time.monotonic() + 60.0
        while calls < 40 or server.counters["ended_session_requests"] < 1000:
            assert time.monotonic() < deadline, (server.counters, sent[0])
            started = time.monotonic()
            assert client.publish("t", b"m%d" % calls).deliveries == 1
            messages = client.receive("q", max_messages=1)
            messages[0].ack()
            slowest = max(slowest, time.monotonic() - started)
            calls += 1
    finally:
        stop.set()
        flooder.join(10)
    assert slowest < 5.0, f"a call of the reading client waited {slowest:.2f} s"
    stats = client.server_stats()
    assert stats["slow_client"] == 1   # ended once; its later requests started nothing
    assert stats["connections"] == 1 and stats["sessions"] == 2
    assert stats["ended_session_requests"] >= 1000
    assert client.stats().queues["q"].acked == calls


def test_an_ended_session_is_told_goodbye_and_serves_no_more_requests(track: Tracker) -> None:
    server = track.server(heartbeat_interval=0.05, heartbeat_timeout=0.3)
    context = zmq.Context()
    dealer = _raw_dealer(context, server.endpoint)
    try:
        header = protocol.encode_header
        dealer.send_multipart([header(Opcode.HELLO, 1),
                               msgspec.msgpack.encode({"heartbeat": True})])
        assert dealer.poll(5000)
        dealer.recv_multipart()
        track.wait_until(lambda: server.counters["sessions_expired"] == 1,
                         what="the silent session to end")
        assert dealer.poll(5000)
        goodbye = dealer.recv_multipart()
        assert protocol.decode_header(goodbye[0])[1:] == (Status.GOODBYE, 0)
        error = protocol.decode_error(goodbye[1])
        assert isinstance(error, errors.SessionExpired) and "heartbeats" in str(error)
        dealer.send_multipart([header(Opcode.LIST_TOPICS, 2), _CALL])
        track.wait_until(lambda: server.counters["ended_session_requests"] == 1,
                         what="the request to be dropped")
        assert not dealer.poll(200), "a request of an ended session was answered"
        assert server.counters["sessions"] == 1   # no new session for that connection
    finally:
        dealer.close()
        context.term()


PAUSED_CLIENT = textwrap.dedent("""
    import asyncio, json, sys, time
    import fastfanout
    from fastfanout import aio

    endpoint, flavour = sys.argv[1], sys.argv[2]

    def report(started, outcome):
        print(json.dumps([outcome, time.monotonic() - started]), flush=True)

    def blocking():
        client = fastfanout.connect(endpoint, local_channel=False, timeout=60.0)
        print("ready", flush=True)
        for line in sys.stdin:
            started = time.monotonic()
            try:
                client.list_queues()
                report(started, "ok")
            except fastfanout.FastFanoutError as exc:
                report(started, type(exc).__name__)

    async def asynchronous():
        client = await aio.connect(endpoint, local_channel=False, timeout=60.0)
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while await loop.run_in_executor(None, sys.stdin.readline):
            started = time.monotonic()
            try:
                await client.list_queues()
                report(started, "ok")
            except fastfanout.FastFanoutError as exc:
                report(started, type(exc).__name__)

    blocking() if flavour == "blocking" else asyncio.run(asynchronous())
""")


@pytest.mark.parametrize("flavour", ["blocking", "asyncio"])
def test_a_client_whose_session_ended_connects_anew(track: Tracker, flavour: str) -> None:
    """A client paused past its heartbeat timeout: its session ends. Resumed, it learns
    so from the broker's GOODBYE (no waiting for its own timeout), and a new session
    serves its next call."""
    # a heartbeat timeout a loaded machine keeps before the pause (its heartbeats may lag
    # a second); the client's call timeout (60 s) is far past the 10 s a call may take
    server = track.server(heartbeat_interval=0.1, heartbeat_timeout=2.0)
    child = subprocess.Popen([sys.executable, "-c", PAUSED_CLIENT, server.endpoint, flavour],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    track.processes.append(child)
    assert child.stdin is not None and child.stdout is not None

    def call() -> tuple[str, float]:
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write(b"call\n")
        child.stdin.flush()
        outcome, seconds = json.loads(child.stdout.readline())
        return outcome, seconds

    assert child.stdout.readline().strip() == b"ready"
    assert call()[0] == "ok"
    child.send_signal(signal.SIGSTOP)
    try:
        track.wait_until(lambda: server.counters["sessions_expired"] == 1,
                         what="the paused client's session to end")
    finally:
        child.send_signal(signal.SIGCONT)
    outcomes = [call()]
    if outcomes[0][0] != "ok":   # the call left before the client read the GOODBYE
        outcomes.append(call())
    assert outcomes[0][0] in ("ok", "SessionExpired") and outcomes[-1][0] == "ok", outcomes
    assert max(seconds for _, seconds in outcomes) < 10.0, outcomes
    assert server.counters["sessions"] == 2 and server.counters["sessions_expired"] == 1
    child.stdin.close()
    assert child.wait(10) == 0, child.stderr.read() if child.stderr else b""


# -- sessions nobody releases -----------------------------------------------------------


def test_garbage_peers_without_heartbeats_are_released_after_the_idle_timeout(
        track: Tracker) -> None:
    server = track.server(idle_session_timeout=0.5)
    client = track.client(server.endpoint, local_channel=False)
    client.create_queue("q")
    context = zmq.Context()
    garbage = [_raw_dealer(context, server.endpoint) for _ in range(200)]
    # a session without heartbeats that holds a consumer is kept: ending it would
    # take the consumer from a client that may still be there
    holder = _raw_dealer(context, server.endpoint)
    try:
        for dealer in garbage:
            dealer.send_multipart([b"junk"])
        holder.send_multipart([protocol.encode_header(Opcode.HELLO, 1),
                               msgspec.msgpack.encode({"heartbeat": False})])
        holder.send_multipart([protocol.encode_header(Opcode.CONSUME, 2), msgspec.msgpack.encode(
            [[], {"queue": "q", "prefetch": 1, "visibility_timeout": None}])])
        track.wait_until(lambda: server.counters["error.malformed_frame"] == 200,
                         what="every garbage frame to be answered")
        track.wait_until(lambda: client.server_stats()["connections"] == 2,
                         what="the garbage sessions to end")
        stats = client.server_stats()
        assert stats["sessions_idle"] == 200 and stats["consumers"] == 1
    finally:
        for dealer in [*garbage, holder]:
            dealer.close()
        context.term()


def test_idle_session_timeout_is_checked() -> None:
    for bad in (0, -1.0, float("inf"), "1"):
        with pytest.raises(InvalidArgument, match="idle_session_timeout"):
            Server("ipc:///nonexistent/x.sock", idle_session_timeout=bad)  # type: ignore[arg-type]
    for bad in (0, 1.5):
        with pytest.raises(InvalidArgument, match="max_queued_replies"):
            Server("ipc:///nonexistent/x.sock", max_queued_replies=bad)  # type: ignore[arg-type]


def test_frame_and_request_sizes_past_a_64_bit_number_are_refused_at_once() -> None:
    """``serve --max-request-bytes 10**23`` passed every check and failed at bind with
    libzmq's OverflowError (a traceback): ZMQ_MAXMSGSIZE is a signed 64-bit number."""
    for name in ("max_request_bytes", "max_frame_bytes"):
        for bad in (10**23, 1 << 63, "1"):
            with pytest.raises(InvalidArgument, match=name):
                Server("ipc:///nonexistent/x.sock", **{name: bad})
    Server("ipc:///nonexistent/x.sock", max_request_bytes=(1 << 63) - 1)   # the largest


# -- the lock file and the socket files -------------------------------------------------


def test_a_planted_lock_file_link_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.write_bytes(b"precious contents\n")
    endpoint = f"ipc://{tmp_path}/broker.sock"
    (tmp_path / "broker.sock.lock").symlink_to(victim)
    with pytest.raises(UnsafeLockFile, match="symbolic link"):
        Server(endpoint).start()
    assert victim.read_bytes() == b"precious contents\n"
    dangling = tmp_path / "other.sock.lock"
    dangling.symlink_to(tmp_path / "created-by-the-broker")
    with pytest.raises(UnsafeLockFile, match="symbolic link"):
        Server(f"ipc://{tmp_path}/other.sock").start()
    assert not (tmp_path / "created-by-the-broker").exists()


def test_serve_refuses_a_planted_lock_file_link(track: Tracker, tmp_path: Path) -> None:
    victim = tmp_path / "precious"
    victim.write_bytes(b"precious contents\n")
    (tmp_path / "cli.sock.lock").symlink_to(victim)
    serve = track.process(["-m", "fastfanout", "serve", "--in-memory", "--endpoint",
                           f"ipc://{tmp_path}/cli.sock"])
    assert serve.wait(15) != 0
    assert serve.stderr is not None and b"symbolic link" in serve.stderr.read()
    assert victim.read_bytes() == b"precious contents\n"


def test_a_lock_directory_others_may_write_to_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafeLockFile, match="writable by other users"):
        Server(f"ipc://{shared}/broker.sock").start()
    shared.chmod(0o1777)   # sticky, as /tmp: nobody may replace another's file
    Server(f"ipc://{shared}/broker.sock").start().stop()


def test_socket_files_are_private_whatever_the_umask(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/open.sock"
    previous = os.umask(0)
    try:
        server = Server(endpoint).start()
    finally:
        os.umask(previous)
    try:
        for name in ("open.sock", "open.sock.stream", "open.sock.lock"):
            mode = stat.S_IMODE((tmp_path / name).stat().st_mode)
            assert mode == 0o600, f"{name} has mode {mode:o}"
    finally:
        server.stop()


def test_no_broker_takes_over_a_socket_another_one_listens_on(track: Tracker,
                                                               tmp_path: Path) -> None:
    first = track.server(f"ipc://{tmp_path}/a.sock")
    client = track.client(first.endpoint)
    client.create_queue("q")
    for endpoint, stream in ((f"ipc://{tmp_path}/b.sock", first.endpoint),
                             (f"{first.endpoint}.stream", None)):
        with pytest.raises(errors.BrokerRunning, match="already listens"):
            Server(endpoint, stream_endpoint=stream).start()
    assert client.list_queues() == ["q"]   # the first broker still answers
    assert not (tmp_path / "b.sock").exists()
    with pytest.raises(InvalidArgument, match="is the command endpoint"):
        Server(first.endpoint, stream_endpoint=first.endpoint)


@pytest.mark.parametrize("kind", ["file", "link", "directory"])
@pytest.mark.parametrize("which", ["endpoint", "stream endpoint"])
def test_a_file_of_the_users_at_an_endpoint_is_refused_and_kept(tmp_path: Path, kind: str,
                                                                 which: str) -> None:
    """libzmq's bind unlinks whatever has the socket's path: a mistyped endpoint naming a
    user's file (or link) deleted it, and the broker served there."""
    path = tmp_path / ("b.sock" if which == "endpoint" else "b.sock.stream")
    precious = tmp_path / "precious"
    precious.write_bytes(b"precious contents\n")
    if kind == "file":
        path.write_bytes(b"notes\n")
    elif kind == "link":
        path.symlink_to(precious)
    else:
        path.mkdir()
    occupant = {"file": "a regular file", "link": "a symbolic link",
                "directory": "a directory"}[kind]
    with pytest.raises(errors.TransportError, match=f"is {occupant}, not a socket"):
        Server(f"ipc://{tmp_path}/b.sock").start()
    assert os.path.lexists(path) and precious.read_bytes() == b"precious contents\n"
    if kind == "file":
        assert path.read_bytes() == b"notes\n"
    assert not (tmp_path / "b.sock.lock").exists()   # the lock was let go
    # a client told so says what is there, not "a stale socket"
    from fastfanout.runtime import ipc_problem

    if which == "endpoint":
        assert ipc_problem(f"ipc://{path}") == f"{path} is {occupant}, not a broker's socket"


def test_a_stopped_broker_removes_its_socket_files(tmp_path: Path) -> None:
    server = Server(f"ipc://{tmp_path}/gone.sock").start()
    assert (tmp_path / "gone.sock").is_socket()
    assert (tmp_path / "gone.sock.stream").is_socket()
    server.stop()
    assert not (tmp_path / "gone.sock").exists()
    assert not (tmp_path / "gone.sock.stream").exists()
    Server(f"ipc://{tmp_path}/gone.sock").start().stop()   # the endpoint serves again


# -- requests too large to send -----------------------------------------------------------


def test_a_server_takes_frames_as_large_as_the_requests_it_answers(track: Tracker) -> None:
    # until 2026-12-05 a Server given a max_request_bytes past 256 MiB kept 256 MiB frames
    # (``fastfanout serve`` raised them): a request it would answer cut the connection
    from fastfanout.wire.protocol import DEFAULT_MAX_FRAME_BYTES

    large = track.server(max_request_bytes=DEFAULT_MAX_FRAME_BYTES * 2)
    assert track.client(large.endpoint).info["max_frame_bytes"] == DEFAULT_MAX_FRAME_BYTES * 2
    small = track.server(max_request_bytes=1 << 20)
    assert track.client(small.endpoint).info["max_frame_bytes"] == DEFAULT_MAX_FRAME_BYTES
    chosen = track.server(max_request_bytes=1 << 20, max_frame_bytes=4 << 20)
    assert track.client(chosen.endpoint).info["max_frame_bytes"] == 4 << 20


def test_an_oversized_request_is_refused_before_it_is_sent(track: Tracker) -> None:
    server = track.server(max_request_bytes=64 * 1024, max_frame_bytes=256 * 1024)
    client = track.client(server.endpoint, local_channel=False, timeout=2.0)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    just_above = bytes(64 * 1024)
    with pytest.raises(RequestTooLarge, match=r"exceeds the broker's max_request_bytes=65536"):
        client.publish("t", just_above)
    with pytest.raises(RequestTooLarge, match=r"request of \d+ bytes"):
        client.publish_batch("t", [just_above])
    waiting = client.publish_nowait("t", b"small")
    refused = client.send_nowait("q", just_above)
    with pytest.raises(RequestTooLarge):
        refused.result()
    assert waiting.result().deliveries == 1   # the other batch went through
    assert client.publish("t", bytes(32 * 1024)).deliveries == 1   # still connected
    producer = client.producer("t")
    producer.offer(just_above)   # the body fits, not its frame with the request header
    with pytest.raises(RequestTooLarge):
        producer.flush()   # the frame can never be sent: it is dropped
    assert producer.dropped_frames == 1 and producer.pending == 0
    stats = client.server_stats()
    assert "error.request_too_large" not in stats and stats.get("disconnects", 0) == 0
    assert client.stats().queues["q"].enqueued == 2
    client.close()   # nothing kept: the refusal was raised once, by flush()


def test_a_frame_above_max_frame_bytes_is_refused_not_a_lost_broker(track: Tracker) -> None:
    server = track.server(max_request_bytes=1 << 20, max_frame_bytes=64 * 1024)
    client = track.client(server.endpoint, local_channel=False, timeout=2.0)
    client.create_queue("q")
    with pytest.raises(RequestTooLarge, match=r"max_frame_bytes=65536"):
        client.send("q", bytes(100 * 1024))
    assert client.send("q", b"fine").deliveries == 1
    assert server.counters["disconnects"] == 0


def test_the_asyncio_client_refuses_an_oversized_request(track: Tracker) -> None:
    server = track.server(max_request_bytes=64 * 1024)

    async def main() -> None:
        async with aio.connect(server.endpoint, local_channel=False, timeout=2.0) as client:
            await client.create_queue("q")
            with pytest.raises(RequestTooLarge, match="max_request_bytes=65536"):
                await client.send("q", bytes(64 * 1024))
            with pytest.raises(RequestTooLarge):
                await client.send_batch("q", [bytes(64 * 1024)])
            await client.create_queue("r")
            small = client.send_nowait("r", b"small")   # another batch: not refused
            with pytest.raises(RequestTooLarge):
                await client.send("q", bytes(64 * 1024))
            assert (await small).deliveries == 1
            assert (await client.send("q", b"fine")).deliveries == 1   # still connected
            assert (await client.stats()).queues["q"].enqueued == 1

    asyncio.run(main())
    assert server.counters["error.request_too_large"] == 0

