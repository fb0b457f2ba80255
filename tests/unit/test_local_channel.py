"""Local channels in one process: making, attaching, bells, spills, backlogs, refusals."""

import os
import select
import subprocess
import sys
import textwrap

import pytest

from fastfanout._ext.shmring import MIN_CAPACITY
from fastfanout.local_channel import BROKER_BELL, TO_BROKER, LocalChannel, PeerGone


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def no_spill(frames):
    raise AssertionError(f"unexpected spill of {len(frames)} frames")


@pytest.fixture
def sides():
    """(client side, broker side) of one attached channel with rings of MIN_CAPACITY."""
    client = LocalChannel.create(MIN_CAPACITY)
    directory = client.directory
    assert directory is not None and os.stat(directory).st_mode & 0o777 == 0o700
    broker = LocalChannel.attach(directory)
    client.attached()
    assert client.directory is None and not os.path.exists(directory)
    client.spill = broker.spill = no_spill
    yield client, broker
    client.close()
    broker.close()


def test_messages_flow_both_ways(sides):
    client, broker = sides
    assert client.try_send([b"request", b"1"])
    assert broker.read(10) == [[b"request", b"1"]]
    assert broker.try_send([b"reply"])
    assert client.read(10) == [[b"reply"]]


def test_a_sleeping_reader_gets_one_ring(sides):
    client, broker = sides
    assert broker.incoming.sleep()
    assert not readable(broker.bell.fd)
    client.try_send([b"a"])
    client.try_send([b"b"])
    assert readable(broker.bell.fd)
    broker.bell.drain()
    assert not readable(broker.bell.fd)
    assert broker.read(10) == [[b"a"], [b"b"]]


def test_a_too_large_message_is_spilled_after_a_marker(sides):
    client, broker = sides
    spilled = []
    big = b"x" * MIN_CAPACITY
    assert client.try_send([b"small"])
    client.spill = spilled.append
    assert client.try_send([big])
    assert spilled == [[big]] and client.spills == 1
    assert client.try_send([b"after"])
    assert broker.read(10) == [[b"small"], None]
    assert broker.read(10) == [[b"after"]]


def test_the_backlog_waits_for_room_and_keeps_order(sides):
    client, broker = sides
    body = b"q" * 5000
    sent = 0
    while broker.try_send([body, b"%d" % sent]):
        sent += 1
    for extra in range(sent, sent + 5):
        broker.send_or_queue([body, b"%d" % extra], now=1.0)
    assert len(broker.backlog) == 5 and broker.full == 1 and broker.backlog_since == 1.0
    assert not broker.flush_backlog(now=2.0)
    got = client.read(3)              # makes room, and rings the waiting broker's bell
    assert readable(broker.bell.fd)
    broker.flush_backlog(now=3.0)
    assert len(broker.backlog) < 5 and broker.backlog_since == 3.0
    while broker.backlog:
        got += client.read(100)
        broker.flush_backlog(now=4.0)
    got += client.read(100)
    assert [m[1] for m in got] == [b"%d" % i for i in range(sent + 5)]


def test_a_closed_peer_is_noticed_on_both_bells(sides):
    client, broker = sides
    client.close()
    assert readable(broker.bell.fd)            # hung up
    with pytest.raises(PeerGone):
        broker.bell.drain()
    broker.ring_peer()     # ringing the dead peer raises nothing (no EPIPE, no SIGPIPE)


def test_the_client_sees_the_broker_side_close(sides):
    client, broker = sides
    broker.close()
    assert readable(client.bell.fd)
    with pytest.raises(PeerGone):
        client.bell.drain()


def test_ringing_a_dead_peer_cannot_kill_a_process_with_default_sigpipe(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys
        from fastfanout._ext.shmring import MIN_CAPACITY
        from fastfanout.local_channel import LocalChannel
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as many command-line tools do
        client = LocalChannel.create(MIN_CAPACITY)
        broker = LocalChannel.attach(client.directory)
        client.attached()
        client.close()
        for _ in range(100_000):   # more than a FIFO holds
            broker.ring_peer()
        print("alive")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 0 and done.stdout.split() == [b"alive"], done.stderr


def test_attach_refuses_what_is_not_a_private_channel(tmp_path):
    with pytest.raises(FileNotFoundError):
        LocalChannel.attach(str(tmp_path / "missing"))
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o755)
    os.chmod(open_dir, 0o755)
    with pytest.raises(ValueError, match="private"):
        LocalChannel.attach(str(open_dir))
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    with pytest.raises(FileNotFoundError):
        LocalChannel.attach(str(empty))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ValueError):
        LocalChannel.attach(str(tmp_path / "file"))


def test_attach_refuses_a_regular_file_as_a_bell():
    client = LocalChannel.create(MIN_CAPACITY)
    try:
        assert client.directory is not None
        os.remove(os.path.join(client.directory, BROKER_BELL))
        with open(os.path.join(client.directory, BROKER_BELL), "wb"):
            pass
        with pytest.raises(ValueError, match="not a FIFO"):
            LocalChannel.attach(client.directory)
        os.remove(os.path.join(client.directory, TO_BROKER))
        with pytest.raises(FileNotFoundError):
            LocalChannel.attach(client.directory)
    finally:
        directory = client.directory
        client.close()
    assert directory is not None and not os.path.exists(directory)
