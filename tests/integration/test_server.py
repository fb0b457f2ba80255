"""The broker server against real clients, raw sockets and real processes."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import stat
import struct
import subprocess
import textwrap
import time
from typing import Any
from typing import Any as Tracker

import msgspec
import pytest
import zmq
from clocks import FakeClock

import fastfanout
from fastfanout import aio
from fastfanout._ext import codec
from fastfanout.errors import BrokenConnection, BrokerRunning, InvalidArgument
from fastfanout.runtime import runtime_dir
from fastfanout.server.loop import IDLE_TICK, Server
from fastfanout.server.streams import PROBE_PREFIX
from fastfanout.wire import protocol
from fastfanout.wire.protocol import Opcode, Status


def test_every_operation(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_queue("dlq")
    client.create_queue("q", max_receive_count=2, dead_letter_queue="dlq",
                        visibility_timeout=30.0, redelivery_backoff=(0.0,))
    client.create_queue("other")
    client.create_topic("t")
    assert client.list_topics() == ["t"]
    assert client.list_queues() == ["dlq", "other", "q"]
    settings = client.queue_settings("q")
    assert settings.dead_letter_queue == "dlq" and settings.redelivery_backoff == (0.0,)
    sid = client.subscribe("t", "q")
    assert client.subscribe("t", "q") == sid
    other = client.subscribe("t", "other", filter_policy={"kind": ["x"]})
    assert client.list_subscriptions() == {sid: ("t", "q"), other: ("t", "other")}
    assert client.subscription(other).queue == "other"
    client.set_filter_policy(other, None)
    result = client.publish("t", b"one", attributes={"kind": "x", "n": 2})
    assert result.deliveries == 2 and not result.duplicate
    batch = client.publish_batch("t", [b"two", fastfanout.PublishEntry(b"three", {"a": "b"})])
    assert batch.message_ids == [result.message_id + 1, result.message_id + 2]
    assert client.send("other", b"direct").deliveries == 1
    assert len(client.send_batch("other", [b"d1", b"d2"])) == 2
    messages = client.receive("q", max_messages=10)
    assert [m.body for m in messages] == [b"one", b"two", b"three"]
    assert messages[0].attributes == {"kind": "x", "n": 2} and messages[0].queue == "q"
    messages[0].ack()
    with pytest.raises(fastfanout.StaleReceipt) as stale:
        client.ack(messages[0].receipt)
    assert stale.value.receipts == [messages[0].receipt]
    messages[1].extend(60.0)
    messages[1].nack()
    messages[2].term()
    dead = client.receive("dlq", max_messages=5)
    assert dead[0].dead_letter is not None and dead[0].dead_letter.reason == "rejected"
    client.ack_batch([m.receipt for m in dead])
    assert client.purge("other") == 6
    assert client.redrive("dlq") == 0
    stats = client.stats()
    assert stats.topics["t"].published == 3 and stats.queues["q"].acked == 1
    assert client.check()
    client.unsubscribe(other)
    with pytest.raises(fastfanout.NotFound):
        client.unsubscribe(other)
    with pytest.raises(fastfanout.InvalidArgument):
        client.create_queue("bad name")
    with pytest.raises(fastfanout.AlreadyExists):
        client.create_queue("q", visibility_timeout=1.0)
    with pytest.raises(fastfanout.InvalidFilterPolicy):
        client.subscribe("t", "other", filter_policy={"kind": [{"nonsense": 1}]})
    waited = client.receive("other", max_messages=1, wait=0.2)
    assert waited == []
    client.delete_topic("t")
    client.delete_queue("other")
    stats = client.server_stats()
    assert stats["connections"] == 1 and stats["ended_sessions_forgotten"] == 0
    client.close()


def test_long_poll_wakes_on_publish(track: Tracker) -> None:
    server = track.server()
    producer = track.client(server.endpoint)
    consumer = track.client(server.endpoint)
    producer.create_queue("q")
    pending = consumer.connection.request(protocol.Opcode.RECEIVE, [protocol.encode_payload(
        [[], {"queue": "q", "max_messages": 5, "wait": 10.0}])])
    track.wait_until(lambda: server.counters["requests"] >= 4, what="the long poll to arrive")
    producer.send("q", b"late")
    frames = consumer.connection.wait(pending, 5.0)
    assert codec.decode_batch(frames[0])[0].body == b"late"
    producer.close()
    consumer.close()


def test_push_consumer_respects_prefetch(track: Tracker, endpoint: str) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_queue("q")
    client.send_batch("q", [b"m%d" % i for i in range(50)])
    consumer = client.consume("q", prefetch=5)
    held = []
    while len(held) < 5:
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None
        held.extend(batch)
    assert consumer.next_batch(timeout=0.3) is None  # no credit left: nothing more pushed
    assert client.stats().queues["q"].leased == 5
    for message in held:
        message.ack()
    seen = 5
    while seen < 50:
        batch = consumer.next_batch(timeout=5.0)
        assert batch is not None
        seen += len(batch)
        batch.ack()
    consumer.cancel()
    track.wait_until(lambda: client.stats().queues["q"].acked == 50, what="all acks")
    client.close()


def test_second_broker_on_same_endpoint_is_refused(track: Tracker) -> None:
    server = track.server()
    with pytest.raises(BrokerRunning, match="already serves"):
        Server(server.endpoint).start()
    client = track.client(server.endpoint)
    client.create_topic("still-mine")
    client.close()


def test_non_loopback_tcp_needs_curve() -> None:
    with pytest.raises(fastfanout.InvalidArgument, match="CURVE"):
        Server("tcp://0.0.0.0:5999")


def test_runtime_dir_is_private(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    path = runtime_dir()
    assert path.parent == tmp_path and stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)
    with pytest.raises(fastfanout.FastFanoutError, match="mode 755"):
        runtime_dir()


def _raw_request(dealer: zmq.Socket[bytes], frames: list[bytes]) -> tuple[int, str]:
    dealer.send_multipart(frames)
    assert dealer.poll(5000), "no reply to a bad request"
    reply = dealer.recv_multipart()
    _, status, _ = protocol.decode_header(reply[0])
    code = msgspec.msgpack.decode(reply[1])[0] if status == protocol.Status.ERROR else ""
    return status, code


def test_garbage_never_takes_the_broker_down(track: Tracker) -> None:
    server = track.server(max_request_bytes=1 << 20, max_frame_bytes=4 << 20)
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(server.endpoint)
    try:
        header = protocol.encode_header
        cases = [
            ([b"junk"], "malformed_frame"),
            ([b"XX" + bytes(10)], "malformed_frame"),
            ([header(0x7F, 1)], "unknown_opcode"),
            ([header(protocol.Opcode.LIST_TOPICS, 2, version=9)], "unsupported_version"),
            ([header(protocol.Opcode.PUBLISH, 3), b"t", b"FFB1garbage"], "malformed_frame"),
            ([header(protocol.Opcode.PUBLISH, 4), b"\xff\xfe", b""], "malformed_frame"),
            ([header(protocol.Opcode.PUBLISH, 5)], "malformed_frame"),
            ([header(protocol.Opcode.ACK, 6), b"abc"], "malformed_frame"),
            ([header(protocol.Opcode.CREATE_TOPIC, 7), b"\xc1"], "malformed_frame"),
            # msgpack nested beyond the decoder's recursion (was an `internal` error)
            ([header(protocol.Opcode.SUBSCRIBE, 12), b"\x91" * 100_000 + b"\xc0"],
             "malformed_frame"),
            ([header(protocol.Opcode.CREATE_TOPIC, 8), msgspec.msgpack.encode([[1, 2], {}])],
             "invalid_argument"),
            ([header(protocol.Opcode.PUBLISH, 9), b"t", bytes(2 << 20)], "request_too_large"),
            # a SETTLE of more frames than MAX_REQUEST_FRAMES: refused, none of it acked
            ([header(protocol.Opcode.SETTLE, 11),
              *[protocol.encode_receipts([1])] * protocol.MAX_REQUEST_FRAMES,
              msgspec.msgpack.encode([0, 0])], "request_too_large"),
        ]
        for frames, code in cases:
            status, got = _raw_request(dealer, frames)
            assert (status, got) == (protocol.Status.ERROR, code), frames[:1]
            assert client.publish("t", b"still fine").deliveries == 1
        # above ZMQ_MAXMSGSIZE: libzmq drops this connection, the broker counts it
        dealer.send_multipart([header(protocol.Opcode.PUBLISH, 10), b"t", bytes(5 << 20)])
        track.wait_until(lambda: server.counters["disconnects"] >= 1, what="the disconnect")
    finally:
        dealer.close()
        context.term()
    stats = client.server_stats()
    assert stats["error.malformed_frame"] == 8 and stats["error.unknown_opcode"] == 1
    assert stats["error.request_too_large"] == 2 and "error.stale_receipt" not in stats
    assert client.stats().queues["q"].enqueued == len(cases)
    client.close()


def test_stock_sub_socket_receives_a_stream(track: Tracker, endpoint: str) -> None:
    server = track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("prices")
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"prices")
    sub.setsockopt(zmq.SUBSCRIBE, PROBE_PREFIX + b"stock")   # after the topic prefix
    sub.connect(server.stream_endpoint)
    try:
        assert sub.poll(5000)   # the probe: the broker applies the subscriptions now
        assert sub.recv_multipart() == [PROBE_PREFIX + b"stock", b""]
        sub.setsockopt(zmq.UNSUBSCRIBE, PROBE_PREFIX + b"stock")
        client.publish_batch("prices", [b"a", b"b", b"c"])
        assert sub.poll(5000)
        topic, frame = sub.recv_multipart()
        records = codec.decode_batch(frame)
        assert topic == b"prices" and [r.body for r in records] == [b"a", b"b", b"c"]
        assert [r.receipt for r in records] == [1, 2, 3]  # the topic's sequence numbers
    finally:
        sub.close()
        context.term()
    client.close()


CONSUMER = textwrap.dedent("""
    import sys, time
    from fastfanout.client import connect
    client = connect(sys.argv[1])
    consumer = client.consume("q", prefetch=10, visibility_timeout=60.0)
    got = 0
    while got < 10:
        batch = consumer.next_batch(timeout=10.0)
        got += len(batch)
    print("leased", got, flush=True)
    time.sleep(120)
""")


def test_killed_consumer_leases_are_released(track: Tracker, endpoint: str) -> None:
    broker = track.broker_process(endpoint)
    client = track.client(endpoint)
    client.create_queue("q")
    client.send_batch("q", [b"m%d" % i for i in range(10)])
    consumer = track.process(["-c", CONSUMER, endpoint])
    assert consumer.stdout is not None
    assert consumer.stdout.readline().split() == [b"leased", b"10"]
    assert client.stats().queues["q"].leased == 10
    consumer.send_signal(signal.SIGKILL)
    consumer.wait(10)
    again = client.receive("q", max_messages=10, wait=10.0)  # lease is 60 s; heartbeats win
    while len(again) < 10:
        again += client.receive("q", max_messages=10, wait=5.0)
    assert all(m.receive_count == 2 for m in again)
    client.close()
    broker.terminate()
    assert broker.wait(10) == 0


def test_broker_restart_is_a_clear_error_then_reconnect(track: Tracker, endpoint: str) -> None:
    broker = track.broker_process(endpoint)
    client = track.client(endpoint, timeout=2.0)
    client.create_topic("t")
    broker.send_signal(signal.SIGTERM)
    assert broker.wait(10) == 0
    with pytest.raises(BrokenConnection):
        client.list_topics()
        client.list_topics()  # the goodbye may arrive only with the next exchange
    track.broker_process(endpoint)
    assert client.list_topics() == []  # a new broker: reconnected, state is fresh
    client.close()


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_socket_consumers_of_a_killed_broker_fail_then_reconnect(track: Tracker,
                                                                 transport: str) -> None:
    """kill -9 and a new broker on the endpoint: ZeroMQ reconnects the socket unseen, so
    the new broker tells the clients' heartbeats it has no session for them."""
    endpoint = track.endpoint(transport)
    broker = track.broker_process(endpoint, "--no-local-channels")
    client = track.client(endpoint, timeout=3.0)
    client.create_queue("q")
    consumer = client.consume("q", prefetch=10)
    broker.kill()
    broker.wait(10)
    broker = track.broker_process(endpoint, "--no-local-channels")
    with pytest.raises(BrokenConnection):   # SessionExpired: told by the new broker
        next(consumer)
    assert client.list_queues() == []   # connected anew: the new broker's state
    client.create_queue("q")
    client.send("q", b"after")
    for message in client.consume("q", prefetch=10):
        assert message.body == b"after"
        message.ack()
        break
    client.send("q", b"for asyncio")

    async def asyncio_consumer() -> None:
        aclient = await aio.connect(endpoint, timeout=3.0)
        try:
            iteration = aclient.consume("q", prefetch=10).__aiter__()
            message = await asyncio.wait_for(iteration.__anext__(), 10)
            assert message.body == b"for asyncio"
            broker.kill()
            broker.wait(10)
            track.broker_process(endpoint, "--no-local-channels")
            with pytest.raises(BrokenConnection):
                await asyncio.wait_for(iteration.__anext__(), 20)
            assert await aclient.list_queues() == []   # connected anew
        finally:
            await aclient.close()

    asyncio.run(asyncio_consumer())


def test_serve_exits_zero_on_sigint(track: Tracker) -> None:
    endpoint = track.endpoint()
    broker = track.broker_process(endpoint)
    os.kill(broker.pid, signal.SIGINT)
    assert broker.wait(10) == 0


def test_serve_stops_cleanly_on_sighup(track: Tracker, tmp_path) -> None:
    """The terminal a broker ran in closed: SIGHUP killed it (status -1), its socket,
    stream socket and lock files left behind."""
    endpoint = f"ipc://{tmp_path}/b.sock"
    broker = track.broker_process(endpoint)
    broker.send_signal(signal.SIGHUP)
    assert broker.wait(10) == 0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_as_soon_as_the_socket_appears_stops_cleanly(track: Tracker, tmp_path,
                                                               signum: int) -> None:
    """A supervisor that signals once the socket file exists (before the loop runs):
    exit 0 and no socket or lock file left (it was killed between the bind and the loop,
    its files left behind, or said "aborted")."""
    for attempt in range(3):
        directory = tmp_path / f"run{signum}-{attempt}"
        directory.mkdir()
        # -X faulthandler: a broker that does not stop is made to print where each of
        # its threads is (SIGABRT), for the failure's message
        broker = track.process(["-X", "faulthandler", "-m", "fastfanout", "serve",
                                "--in-memory", "--endpoint", f"ipc://{directory}/b.sock"])
        deadline = time.monotonic() + 20
        while not (directory / "b.sock").exists():
            assert broker.poll() is None and time.monotonic() < deadline, broker.returncode
            time.sleep(0.0005)
        broker.send_signal(signum)
        try:
            status = broker.wait(10)
        except subprocess.TimeoutExpired:
            broker.send_signal(signal.SIGABRT)
            _, stderr = broker.communicate(timeout=10)
            raise AssertionError(f"attempt {attempt}: the broker did not stop within 10 s "
                                 f"of signal {signum}; its threads:\n"
                                 f"{stderr.decode(errors='replace')}") from None
        assert status == 0
        assert list(directory.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_broker_started_with_the_stop_signals_blocked_still_stops_on_them(
        track: Tracker, tmp_path, signum: int) -> None:
    """A parent's signal mask is inherited across exec: a supervisor (or a thread) that
    blocked SIGTERM when it started the broker left a broker that never stopped on it."""
    endpoint = f"ipc://{tmp_path}/b.sock"
    launcher = textwrap.dedent(f"""
        import os, signal, sys
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGTERM, signal.SIGINT}})
        os.execv(sys.executable, [sys.executable, "-m", "fastfanout", "serve",
                                  "--in-memory", "--endpoint", {endpoint!r}])
    """)
    broker = track.process(["-c", launcher])
    track.wait_until(lambda: (tmp_path / "b.sock").exists() or broker.poll() is not None,
                     what="the broker's socket file")
    fastfanout.connect(endpoint, timeout=10.0).close()   # its loop runs
    broker.send_signal(signum)
    assert broker.wait(10) == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == []


def test_header_layout() -> None:
    assert struct.calcsize("<2sBBQ") == protocol.HEADER.size == 12


def test_stop_from_another_thread_while_serve_forever_runs(tmp_path):
    import threading

    from fastfanout import Server, connect

    server = Server(f"ipc://{tmp_path}/sf")
    server.bind()
    loop = threading.Thread(target=server.serve_forever)
    loop.start()
    try:
        with connect(f"ipc://{tmp_path}/sf") as client:
            client.create_queue("q")
            client.send("q", b"x")
            assert client.receive("q")[0].body == b"x"
    finally:
        server.stop(timeout=10)
        loop.join(10)
    assert not loop.is_alive()


def test_acked_batches_are_forgotten_and_partial_acks_are_held(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send_batch("q", [b"m%d" % i for i in range(10)])
    consumer = client.consume("q", prefetch=10)
    whole = consumer.next_batch(timeout=10.0)
    assert whole is not None and len(whole) == 10
    assert client.server_stats()["held_receipts"] == 10
    whole.ack(wait=True)
    assert client.server_stats()["held_receipts"] == 0
    client.send_batch("q", [b"n%d" % i for i in range(10)])
    part = consumer.next_batch(timeout=10.0)
    assert part is not None and len(part) == 10
    part[0].ack()   # one receipt of ten: the record stays for a vanishing client
    assert client.server_stats()["held_receipts"] == 10
    consumer.cancel()


def test_settle_acks_and_returns_credit_without_a_reply(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q", visibility_timeout=60.0)
    client.send_batch("q", [b"m%d" % i for i in range(30)])
    consumer = client.consume("q", prefetch=10)
    got = 0
    while got < 30:   # prefetch 10: each batch's credit must come back with its SETTLE
        batch = consumer.next_batch(timeout=10.0)
        assert batch is not None
        got += len(batch)
        batch.ack()
    track.wait_until(lambda: client.stats().queues["q"].acked == 30, what="all acked")
    assert server.counters["requests"] > 0 and "error.stale_receipt" not in server.counters
    # A SETTLE whose ack fails is answered with an error, which is counted and ignored.
    client.connection.request(Opcode.SETTLE, [protocol.encode_receipts([12345]),
                                              protocol.NO_CREDIT])
    track.wait_until(lambda: server.counters["error.stale_receipt"] == 1, what="counted")
    assert client.list_queues() == ["q"]
    consumer.cancel()


def test_loop_sleeps_until_the_next_due_time_while_consumers_wait(track: Tracker) -> None:
    # The broker's clock stands still (set by hand to the wall clock before each send, as
    # the client turns a delay into a wall-clock deliver_at), so nothing below comes due.
    clock = FakeClock(time.time())
    server = track.server(broker=fastfanout.Broker(clock=clock))
    client = track.client(server.endpoint)
    client.create_queue("q")
    # nobody waits: housekeeping (once the round that created the queue is over)
    track.wait_until(lambda: server.next_wait() == (IDLE_TICK, False),
                     what="the queue created")
    consumer = client.consume("q", prefetch=10)
    # nothing is due (once the round that registered the consumer is over)
    track.wait_until(lambda: server.next_wait() == (IDLE_TICK, True),
                     what="the consumer registered")
    clock.now = time.time()
    client.send("q", b"soon", delay=0.02)
    # handled and pushed for (the wait is 0 while a round's requests wait for their push)
    track.wait_until(lambda: server.next_wait()[0] > 0, what="the send handled")
    timeout, waiting = server.next_wait()
    # woken when it is due: 0.02 s plus however long the client took to stamp its send
    assert waiting and 0.019 <= timeout < IDLE_TICK
    client.send("q", b"later", delay=5.0)
    assert server.next_wait()[0] == timeout                   # the earliest counts
    consumer.cancel()
    track.wait_until(lambda: server.next_wait() == (IDLE_TICK, False),
                     what="the consumer gone")


def test_the_wait_of_a_loop_whose_broker_was_closed_is_the_idle_tick(track: Tracker) -> None:
    # An embedder may close its broker while the server runs: the loop must not die
    # asking it for the next due time (requests are then answered with Closed). A bound
    # server driven by hand (Server.run_round): its loop's view, with a consumer waiting.
    broker = fastfanout.Broker()
    server = Server(track.endpoint(), broker=broker)
    server.bind()
    try:
        replies: list[list[bytes]] = []
        transport: Any = server.transport
        transport.send_reply = replies.append
        broker.create_queue("q")
        consume = protocol.encode_payload([[], {"queue": "q"}])
        server.run_round([[b"id", protocol.encode_header(Opcode.CONSUME, 1), consume]])
        assert [protocol.decode_header(reply[1])[1] for reply in replies] == [Status.OK]
        assert server.next_wait() == (IDLE_TICK, True)   # a consumer waits; nothing due
        broker.close()
        assert server.next_wait() == (IDLE_TICK, True)
    finally:
        server.stop()


def test_every_queued_request_is_answered_across_rounds(track: Tracker) -> None:
    """More requests than one round handles (1,000): all are answered, none lost."""
    server = track.server()
    context = zmq.Context()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(server.endpoint)
    try:
        count = 2_500
        request = msgspec.msgpack.encode([[], {}])
        for request_id in range(1, count + 1):
            dealer.send_multipart(
                [protocol.encode_header(protocol.Opcode.LIST_TOPICS, request_id), request])
        answered = set()
        while len(answered) < count:
            assert dealer.poll(5000), f"{count - len(answered)} requests unanswered"
            _, status, request_id = protocol.decode_header(dealer.recv_multipart()[0])
            assert status == protocol.Status.OK
            answered.add(request_id)
        assert answered == set(range(1, count + 1))
    finally:
        dealer.close()
        context.term()


def test_settle_calls_run_as_their_session(track: Tracker) -> None:
    """NACK/EXTEND/TERM take their arguments in args or by name, but never a session."""
    server = track.server()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send("q", b"a")
    (message,) = client.receive("q")
    assert client.connection.call(Opcode.EXTEND, receipt=message.receipt, seconds=30.0) is None
    with pytest.raises(InvalidArgument):   # a client may not name the session it acts as
        client.connection.call(Opcode.NACK, message.receipt, session=0)
    assert client.stats().queues["q"].leased == 1
    client.ack(message.receipt)


def test_server_stats_report_the_message_memory(track: Tracker, endpoint: str) -> None:
    from fastfanout._ext import blobs

    # The blob figures are the process's: earlier tests' brokers must be gone first, and
    # no collection may free theirs in the middle.
    gc.collect()
    gc.disable()
    try:
        _report_the_message_memory(track, endpoint, blobs)
    finally:
        gc.enable()


def _report_the_message_memory(track: Tracker, endpoint: str, blobs: Any) -> None:
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_queue("q")
    before = client.server_stats()
    for key in ("blob_slab_live_bytes", "blob_slab_kept_bytes", "blob_slab_released",
                "blob_slab_mapped_bytes", "blob_big_pool_bytes", "blob_big_pool_overflows"):
        assert type(before[key]) is int and before[key] >= 0, key
    assert before["blob_slab_kept_bytes"] <= blobs.BLOB_SLAB_KEEP_BYTES
    client.send_batch("q", [b"x" * 64] * 1000)
    held = client.server_stats()["blob_slab_live_bytes"] - before["blob_slab_live_bytes"]
    assert 1000 * blobs.blob_bytes(64) <= held < 1000 * blobs.blob_bytes(128)
    client.ack_batch([m.receipt for m in client.receive("q", max_messages=1000)])
    assert client.server_stats()["blob_slab_live_bytes"] == before["blob_slab_live_bytes"]


def test_a_body_too_deep_for_body_policies_is_filtered_out_over_the_wire(
        track: Tracker) -> None:
    # the server answered such a publish with an `internal` error (RecursionError)
    endpoint = track.endpoint()
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("deep")
    client.create_queue("picky")
    client.subscribe("deep", "picky", filter_policy={"a": [{"exists": True}]},
                     filter_scope="body")
    body = b'{"a": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}"
    assert client.publish("deep", body).deliveries == 0
    assert client.publish("deep", b'{"a": 1}').deliveries == 1
    assert client.stats().topics["deep"].filtered_out == 1


def _nested_policy(depth: int) -> dict[str, Any]:
    policy: dict[str, Any] = {"a": ["x"]}
    for _ in range(depth):
        policy = {"a": policy}
    return policy


@pytest.mark.parametrize("policy", [
    _nested_policy(5000),                                  # too deep for the client's encoder
    '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}",        # too deep for the broker's json
], ids=["dict", "text"])
def test_a_policy_too_deep_to_encode_is_an_invalid_filter_policy(track: Tracker,
                                                                 policy: Any) -> None:
    # a RecursionError escaped from the client, or came back as an `internal` error
    endpoint = track.endpoint()
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("t")
    client.create_queue("q")
    with pytest.raises(fastfanout.InvalidFilterPolicy, match="nests deeper than 64 levels"):
        client.subscribe("t", "q", filter_policy=policy, filter_scope="body")
    assert client.list_subscriptions() == {}
    subscription_id = client.subscribe("t", "q")
    with pytest.raises(fastfanout.InvalidFilterPolicy, match="nests deeper than 64 levels"):
        client.set_filter_policy(subscription_id, policy, filter_scope="body")
    assert client.subscription(subscription_id).filter_policy is None


def test_set_filter_policy_keeps_the_scope_over_the_wire(track: Tracker) -> None:
    # both clients sent no scope and the broker took "attributes": a body-scope
    # subscription silently became attribute-scope
    endpoint = track.endpoint()
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("t")
    client.create_queue("q")
    sid = client.subscribe("t", "q", filter_policy={"a": ["x"]}, filter_scope="body")
    client.set_filter_policy(sid, {"a": ["y"]})
    assert client.subscription(sid).filter_scope == "body"
    assert client.publish("t", b'{"a": "y"}').deliveries == 1

    async def main() -> None:
        async with aio.connect(endpoint, timeout=5.0) as aio_client:
            await aio_client.set_filter_policy(sid, {"a": ["z"]})
            assert (await aio_client.subscription(sid)).filter_scope == "body"
            assert (await aio_client.publish("t", b'{"a": "z"}')).deliveries == 1

    asyncio.run(main())


def test_a_content_dedup_fifo_topic_feeds_a_plain_fifo_queue_over_the_wire(
        track: Tracker) -> None:
    # the FIFO queue refused every publish of the content_dedup topic without a dedup_id
    endpoint = track.endpoint()
    track.server(endpoint)
    client = track.client(endpoint)
    client.create_topic("orders", fifo=True, content_dedup=True)
    client.create_queue("billing", fifo=True)
    client.subscribe("orders", "billing")
    first = client.publish("orders", b"order 1", group_id="g")
    assert (first.deliveries, first.duplicate) == (1, False)
    assert client.publish("orders", b"order 1", group_id="g").duplicate
    assert [m.body for m in client.receive("billing")] == [b"order 1"]


def test_a_second_broker_on_an_abstract_ipc_name_is_refused(tmp_path, monkeypatch) -> None:
    """ipc://@NAME has no socket file: its lock file was @NAME.lock in each broker's
    working directory, so a broker started elsewhere found no lock and libzmq's bind failed
    with a TransportError (and a broker whose working directory changed lost its lock
    file); the lock is in the runtime directory, so a second broker is BrokerRunning
    naming the first one's pid, as for a file."""
    import uuid

    endpoint = f"ipc://@fastfanout-test-{uuid.uuid4().hex}"
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    first = Server(endpoint)
    first.bind()
    try:
        assert list((tmp_path / "a").iterdir()) == []   # no lock in the working directory
        locks = [path.name for path in runtime_dir().iterdir() if path.suffix == ".lock"]
        assert any(endpoint[len("ipc://@"):] in name for name in locks)
        monkeypatch.chdir(tmp_path / "b")
        with pytest.raises(BrokerRunning, match="already serves"):
            Server(endpoint).bind()
        assert list((tmp_path / "b").iterdir()) == []
    finally:
        first.stop()
    assert list((tmp_path / "a").iterdir()) == []
