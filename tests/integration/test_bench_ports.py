"""TCP ports of the benchmarks' brokers and peers (fastfanout/bench/servers.py,
processes.py): a broker's stream port (the command port + 1) was taken by another
program's outgoing connection before the broker bound it, and the bench run failed."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from fastfanout.bench import processes, servers
from fastfanout.bench.processes import broker_process, connect_when_up, free_tcp_endpoint
from fastfanout.bench.servers import EPHEMERAL_RANGE_FILE, PORT_FLOOR, free_port
from fastfanout.errors import PeerUnavailable


def ephemeral_floor() -> int | None:
    try:
        with open(EPHEMERAL_RANGE_FILE) as ports:
            return int(ports.read().split()[0])
    except OSError:
        return None


def bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_consecutive_ports_are_free_and_below_the_outgoing_ports() -> None:
    floor = ephemeral_floor()
    for _ in range(20):
        first = free_port(3)
        assert all(bindable(port) for port in range(first, first + 3))
        if floor is not None:
            assert PORT_FLOOR <= first and first + 3 <= floor


def test_a_tcp_endpoint_leaves_its_stream_port_free() -> None:
    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    assert bindable(port) and bindable(port + 1)


def test_no_free_run_of_ports_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        # the only candidate is the held port
        monkeypatch.setattr(servers.random, "randrange", lambda low, high: port)
        with pytest.raises(PeerUnavailable, match="no 2 free consecutive tcp port"):
            free_port(2)


@pytest.fixture
def stream_port_taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The first endpoint the bench picks has its stream port (PORT + 1) held."""
    taken = free_tcp_endpoint()
    port = int(taken.rsplit(":", 1)[1])
    picks = iter([taken])
    monkeypatch.setattr(processes, "free_tcp_endpoint",
                        lambda: next(picks, None) or free_tcp_endpoint())
    with socket.socket() as held:
        held.bind(("127.0.0.1", port + 1))
        held.listen()
        yield taken


def test_a_broker_whose_port_was_taken_starts_again_on_another(
        stream_port_taken: str) -> None:
    with broker_process("tcp") as (endpoint, broker):
        assert endpoint != stream_port_taken
        client = connect_when_up(endpoint, broker)
        try:
            client.create_topic("t")
            assert "t" in client.list_topics()
        finally:
            client.close()
    assert not broker.is_alive()


def test_a_broker_that_cannot_start_fails_after_its_attempts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = free_tcp_endpoint()
    port = int(endpoint.rsplit(":", 1)[1])
    monkeypatch.setattr(processes, "free_tcp_endpoint", lambda: endpoint)
    with socket.socket() as held:
        held.bind(("127.0.0.1", port))
        held.listen()
        with pytest.raises(RuntimeError, match="the broker exited with 1"), \
                broker_process("tcp"):
            pass
