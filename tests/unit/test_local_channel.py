"""Local channels in one process: making, attaching, bells, spills, backlogs, refusals."""

import json
import os
import select
import subprocess
import sys
import textwrap

import pytest

from fastfanout._ext.shmring import MIN_CAPACITY
from fastfanout.errors import MalformedFrame, PeerGone
from fastfanout.transport.local_channel import ATTACH_FIELDS, LocalChannel


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


def no_spill(frames):
    raise AssertionError(f"unexpected spill of {len(frames)} frames")


def descriptors() -> dict[int, str]:
    """This process's open descriptors and what each leads to."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except FileNotFoundError:   # the listing's own descriptor
            pass
    return found


@pytest.fixture
def sides():
    """(client side, broker side) of one attached channel with rings of MIN_CAPACITY."""
    client = LocalChannel.create(MIN_CAPACITY)
    broker = LocalChannel.attach(client.attach_request())
    client.attached()
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
        assert broker.send_or_queue([body, b"%d" % extra], now=1.0, max_backlog_bytes=1 << 20)
    assert len(broker.backlog) == 5 and broker.full == 1 and broker.backlog_since == 1.0
    assert broker.backlog_bytes == 5 * broker.outgoing.record_size([body, b"%d" % sent])
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
    assert broker.backlog_bytes == 0


def test_the_backlog_is_bounded_in_bytes(sides):
    client, broker = sides
    body = b"q" * 5000
    while broker.try_send([body]):
        pass
    size = broker.outgoing.record_size([body])
    bound = 3 * size + size // 2
    for _ in range(3):
        assert broker.send_or_queue([body], now=1.0, max_backlog_bytes=bound)
    assert broker.backlog_bytes == 3 * size and not broker.overflowed
    assert not broker.send_or_queue([body], now=1.0, max_backlog_bytes=bound)   # dropped
    assert broker.overflowed and broker.backlog_bytes == 3 * size
    client.read(100)   # room again: an overflowed channel still takes nothing more
    assert not broker.send_or_queue([b"x"], now=2.0, max_backlog_bytes=bound)
    assert len(broker.backlog) == 3


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


SIGPIPE_DEFAULT = textwrap.dedent("""
    import os, signal, sys
    from fastfanout._ext.shmring import MIN_CAPACITY
    from fastfanout.transport.local_channel import LocalChannel
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)   # as many command-line tools do
    client = LocalChannel.create(MIN_CAPACITY)
    broker = LocalChannel.attach(client.attach_request())
    client.attached()
    (broker if sys.argv[1] == "client" else client).close()
    survivor = client if sys.argv[1] == "client" else broker
    for _ in range(100_000):   # more than a pipe holds
        survivor.ring_peer()
    print("alive")
""")


@pytest.mark.parametrize("side", ["client", "broker"])
def test_ringing_a_dead_peer_cannot_kill_a_process_with_default_sigpipe(side):
    done = subprocess.run([sys.executable, "-c", SIGPIPE_DEFAULT, side], capture_output=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout.split() == [b"alive"], done.stderr


def test_a_channel_has_no_name_anywhere():
    before = descriptors()
    client = LocalChannel.create(MIN_CAPACITY)
    try:
        made = {fd: link for fd, link in descriptors().items() if fd not in before}
        assert len(made) == 6   # two rings, two pipes of two ends
        assert sorted(link.split(":")[0] for link in made.values()) == (
            ["/memfd"] * 2 + ["pipe"] * 4)
        assert all(link.endswith("(deleted)") for link in made.values()
                   if link.startswith("/memfd"))
        request = client.attach_request()
        assert list(request) == list(ATTACH_FIELDS) and request["pid"] == os.getpid()
        assert {request[key] for key in ATTACH_FIELDS[1:]} <= set(made)
    finally:
        client.close()
    assert descriptors().keys() <= before.keys()   # closing an unattached one frees all


KILLED_WHILE_MAKING = textwrap.dedent("""
    import json, os
    from fastfanout._ext.shmring import MIN_CAPACITY
    from fastfanout.transport.local_channel import LocalChannel
    channel = LocalChannel.create(MIN_CAPACITY)
    links = []
    for name in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{name}"))
        except FileNotFoundError:   # the listing's own descriptor
            pass
    print(json.dumps(links), flush=True)
    os._exit(9)   # killed between making the channel and attaching it
""")


def test_a_client_killed_while_making_its_channel_leaves_nothing(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_MAKING], capture_output=True,
                          timeout=60, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert done.returncode == 9, done.stderr
    links = json.loads(done.stdout)
    # the channel is two nameless memory files and pipes: with the process gone, nothing
    # of it exists; no file or directory was made for it anywhere
    assert sum(link.startswith("/memfd:fastfanout-") for link in links) == 2
    assert not [link for link in links
                if "fastfanout-" in link and not link.startswith("/memfd:")]
    assert not os.listdir(tmp_path)


def test_attach_refuses_what_is_not_a_channel():
    bad_shapes = [None, [], {}, {"directory": "/dev/shm/x"},
                  dict.fromkeys(ATTACH_FIELDS, "3"), dict.fromkeys(ATTACH_FIELDS, -1),
                  {**dict.fromkeys(ATTACH_FIELDS, 3), "pid": 0},
                  {**dict.fromkeys(ATTACH_FIELDS, 3), "extra": 1}]
    for request in bad_shapes:
        with pytest.raises(MalformedFrame):
            LocalChannel.attach(request)
    client = LocalChannel.create(MIN_CAPACITY)
    good = client.attach_request()
    unsealed = os.memfd_create("unsealed")
    os.ftruncate(unsealed, 256 + MIN_CAPACITY)
    read_end, write_end = os.pipe()
    before = descriptors()
    try:
        cases = [({"to_broker": good["broker_bell"]}, "not a memfd"),      # rings: memfds
                 ({"to_client": 0 if os.path.exists("/proc/self/fd/0") else 1}, None),
                 ({"to_broker": unsealed}, "not sealed"),
                 ({"broker_bell": good["to_broker"]}, "not a pipe"),        # bells: pipes
                 ({"client_bell": 999_999}, None),                          # no such fd
                 ({"pid": 2 ** 22 + 12345}, None)]                          # no such pid
        for change, message in cases:
            with pytest.raises((ValueError, OSError), match=message):
                LocalChannel.attach({**good, **change})
            assert descriptors().keys() <= before.keys()   # nothing kept open
        broker = LocalChannel.attach({**good, "broker_bell": read_end})   # any pipe does
        broker.close()
    finally:
        client.close()
        for fd in (unsealed, read_end, write_end):
            os.close(fd)


def test_the_broker_side_hears_the_client_process_end():
    local = LocalChannel.create(MIN_CAPACITY)
    request = local.attach_request()
    # the "client" is a child holding the same descriptors under the same numbers
    client = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                              stdin=subprocess.PIPE,
                              pass_fds=[request[key] for key in ATTACH_FIELDS[1:]])
    try:
        broker = LocalChannel.attach({**request, "pid": client.pid})
        try:
            assert broker.process_fd is not None and not readable(broker.process_fd)
            client.communicate(timeout=30)
            assert readable(broker.process_fd)
            assert not readable(broker.bell.fd)   # this process still holds a writer
            with pytest.raises(PeerGone, match="process ended"):
                broker.heard(broker.process_fd)
        finally:
            broker.close()
    finally:
        local.close()
        client.kill()
        client.wait(30)


def test_held_frames_pinning_half_the_ring_are_the_hint_of_a_silence():
    # A client that keeps views of what it read in place holds its own ring: past half
    # of it the broker may write nothing more, not even a heartbeat. The silence error
    # says that instead of asking whether the broker runs (ConnectionCore.silence; found
    # by a bug hunt).
    from types import SimpleNamespace

    from fastfanout.transport.local_channel import HOLD_MIN_BYTES, pinned_hint

    client = LocalChannel.create(1 << 18)
    broker = LocalChannel.attach(client.attach_request())
    client.attached()
    try:
        transport = SimpleNamespace(channel=client)
        assert pinned_hint(transport) == "" and pinned_hint(object()) == ""
        views = []
        while not pinned_hint(transport):
            assert len(views) < 4, "four frames of 64 KiB pin more than half the ring"
            assert broker.try_send([b"x" * HOLD_MIN_BYTES])
            (message,) = client.read(1)
            views.append(memoryview(message[-1]))
            assert (client.incoming.held_bytes * 2 >= client.incoming.capacity) == bool(
                pinned_hint(transport))
        hint = pinned_hint(transport)
        assert hint.startswith(f"this client holds {client.incoming.held} frames in place")
        assert "np.array" in hint
        for view in views:
            view.release()
    finally:
        client.close()
        broker.close()
