"""Which tcp endpoints need libzmq's IPv6 option (the sockets set it for those alone).

No test may open anything but ipc under a temp dir or tcp on 127.0.0.1, so the IPv6
loopback itself is exercised by hand (docs/configuration.md); this checks the choice.
"""

from __future__ import annotations

import pytest

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
