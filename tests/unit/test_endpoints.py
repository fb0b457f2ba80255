"""Which tcp endpoints need libzmq's IPv6 option (the sockets set it for those alone).

No test may open anything but ipc under a temp dir or tcp on 127.0.0.1, so the IPv6
loopback itself is exercised by hand (docs/configuration.md); this checks the choice.
"""

from __future__ import annotations

import re

import pytest

from fastfanout import InvalidArgument, Server, connect
from fastfanout.runtime import endpoint_problem
from fastfanout.transport.sockets import is_ipv6, is_loopback


@pytest.mark.parametrize(("endpoint", "expected"), [
    ("tcp://[::1]:5555", True),
    ("tcp://[fe80::1%eth0]:5555", True),
    ("tcp://127.0.0.1:5555", False),
    ("tcp://localhost:5555", False),
    ("tcp://*:5555", False),
    ("ipc:///tmp/x/b.sock", False),
    ("ipc://@name", False),
])
def test_only_bracketed_tcp_hosts_are_ipv6(endpoint: str, expected: bool) -> None:
    # before, no socket set ZMQ_IPV6: tcp://[::1]:P failed to bind with "No such device"
    assert is_ipv6(endpoint) is expected


def test_the_ipv6_loopback_is_loopback() -> None:
    # so tcp://[::1]:P needs no CURVE, as tcp://127.0.0.1:P does not
    assert is_loopback("tcp://[::1]:5555")
    assert not is_loopback("tcp://[2001:db8::1]:5555")


@pytest.mark.parametrize("host", [
    "127.0.0.1", "0.0.0.0", "*", "localhost", "eth0", "HOST", "my-host.example.com",
    "my-host.example.com.", "[::1]", "[fe80::1%eth0]", "[2001:db8::1]", "a" * 63 + ".b",
])
def test_every_kind_of_host_libzmq_takes_is_well_formed(host: str) -> None:
    assert endpoint_problem(f"tcp://{host}:7000") is None


@pytest.mark.parametrize(("host", "problem"), [
    ("999.1.1.1", "host '999.1.1.1' is not a valid IPv4 address"),
    ("1.2.3", "host '1.2.3' is not a valid IPv4 address"),
    ("[zz::1]", "host '[zz::1]' is not a valid IPv6 address"),
    ("::1", "host '::1': an IPv6 address goes in brackets (tcp://[::1]:PORT)"),
    ("exa_mple.com", "host 'exa_mple.com' is neither an IP address nor a valid host name"),
    ("-a.com", "nor a valid host name"),
    ("a..b", "nor a valid host name"),
    ("a" * 64 + ".com", "nor a valid host name"),
    (".".join(["abcdefgh"] * 29), "nor a valid host name"),   # 260 characters
])
def test_a_host_that_is_no_address_nor_name_is_named(host: str, problem: str) -> None:
    # until 2026-12 any host passed: serve then refused tcp://999.1.1.1:P as "beyond
    # loopback without CURVE keys", and a client waited for a handshake never answered
    found = endpoint_problem(f"tcp://{host}:7000")
    assert found is not None and problem in found
    with pytest.raises(InvalidArgument, match=re.escape(problem)):
        Server(f"tcp://{host}:7000")
    with pytest.raises(InvalidArgument, match=re.escape(problem)):
        connect(f"tcp://{host}:7000")
