"""A broker short of file descriptors refuses local channels instead of dying.

libzmq aborts the broker process when ``accept()`` on an ipc listener meets ``EMFILE``; a
local channel costs the broker five descriptors, so local clients ate the soft limit
(1,024 on most systems) at about 170 clients and the next one killed the broker. Now
``fastfanout serve`` raises its soft limit to the hard one, and an ATTACH that would
leave less than a reserve for sockets is refused: the client stays on its socket.
"""

from __future__ import annotations

import resource
import socket
from typing import Any

import pytest
from conftest import Tracker, wait_for_broker, wait_until

import fastfanout
from fastfanout.errors import BrokenConnection
from fastfanout.transport.local import LocalTransport
from fastfanout.transport.local_channel import local_channels_supported

pytestmark = pytest.mark.skipif(not local_channels_supported(),
                                reason="local channels need Linux with memfd and /proc")

MAX_CLIENTS = 40   # more than a 128-descriptor broker has room for as local clients


def _broker(track: Tracker, endpoint: str, soft: int, hard: int) -> Any:
    """``fastfanout serve`` started with the open-files limit (soft, hard)."""
    script = (
        "import resource, runpy, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))\n"
        f"sys.argv = ['fastfanout', 'serve', '--endpoint', {endpoint!r}, '--in-memory',"
        " '--log-level', 'WARNING']\n"
        "runpy.run_module('fastfanout', run_name='__main__', alter_sys=True)\n")
    process = track.process(["-c", script])
    wait_for_broker(endpoint, process)
    return process


def _soft_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no open-files line in /proc/PID/limits")


def test_serve_raises_its_soft_limit_to_the_hard_one(track: Tracker) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 128:
        pytest.skip(f"the hard open-files limit here is {hard}")
    expected = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    process = _broker(track, track.endpoint(), 128, hard)
    assert _soft_limit(process.pid) == expected


def test_a_broker_short_of_descriptors_keeps_new_clients_on_their_sockets(
        track: Tracker) -> None:
    endpoint = track.endpoint()
    process = _broker(track, endpoint, 128, 128)   # a hard limit: nothing to raise
    clients = []
    for _ in range(MAX_CLIENTS):
        clients.append(track.client(endpoint))
        if not isinstance(clients[-1].connection.transport, LocalTransport):
            break
    else:
        pytest.fail(f"{MAX_CLIENTS} clients all got a local channel under a limit of 128")
    assert isinstance(clients[0].connection.transport, LocalTransport)
    stats = clients[0].server_stats()
    assert stats["local_refused_descriptors"] >= 1
    assert stats["connections"] == len(clients)
    # insisting on a channel is a typed error naming the cause
    with pytest.raises(BrokenConnection, match="descriptors"):
        fastfanout.connect(endpoint, timeout=5.0, local_channel=True)
    # every client, local or not, still works, and the broker is alive
    clients[0].create_queue("q")
    for client in clients:
        client.send("q", b"x")
    assert clients[-1].stats().queues["q"].visible == len(clients)
    assert process.poll() is None


def test_a_broker_near_its_open_files_limit_refuses_connections_instead_of_dying(
        track: Tracker) -> None:
    # Plain connections, one descriptor each in the broker, did what local channels did
    # before: at the limit libzmq's accept() met EMFILE and aborted the broker. Now it
    # moves its socket file aside while it is short (a connect finds no broker) and puts
    # it back once descriptors are free. The connections grow by one per broker round
    # trip here: a flood faster than a round can still pass the margin (descriptors.py).
    endpoint = track.endpoint()
    path = endpoint[len("ipc://"):]
    process = _broker(track, endpoint, 256, 256)
    client = track.client(endpoint, local_channel=False)
    plain: list[socket.socket] = []
    try:
        for _ in range(400):
            sock = socket.socket(socket.AF_UNIX)
            try:
                sock.connect(path)
            except OSError:   # no socket file: the broker stopped new connections
                sock.close()
                break
            plain.append(sock)
            client.server_stats()   # a round of the broker's loop per connection
        else:
            pytest.fail("400 connections let in under an open-files limit of 256")
        assert process.poll() is None
        stats = client.server_stats()
        assert stats["accept_pauses"] == 1
        assert stats["accepting"] == 0
        assert 100 < len(plain) < 256
        # the connections made stay: the client that was there still works
        client.create_queue("q")
        client.send("q", b"kept")
    finally:
        for sock in plain:
            sock.close()
    wait_until(lambda: client.server_stats()["accepting"] == 1,
               what="the broker to let connections in again")
    late = track.client(endpoint)
    assert late.receive("q")[0].body == b"kept"
    assert process.poll() is None
