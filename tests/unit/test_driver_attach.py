"""After HELLO a driver attaches its local channel over the socket it opened, unless a
reconnect during the handshake replaced that socket (then that transport stays) or left
none (then the connection is broken): never an assertion error."""

from __future__ import annotations

import pytest

from fastfanout.client.driver import dealer_to_attach
from fastfanout.errors import BrokenConnection


class Socket:
    pass


class Attached:
    pass


def test_the_socket_opened_for_the_handshake_is_attached_over() -> None:
    socket = Socket()
    assert dealer_to_attach(socket, Socket) is socket


def test_a_transport_a_reconnect_put_in_place_stays() -> None:
    assert dealer_to_attach(Attached(), Socket) is None


def test_no_transport_left_is_a_broken_connection() -> None:
    with pytest.raises(BrokenConnection, match="handshake"):
        dealer_to_attach(None, Socket)
