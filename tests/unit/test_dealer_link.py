"""A client's DEALER learns its connection was lost even when the handshake came first.

The transports watch the DEALER with a libzmq monitor: a disconnect counts as a lost
connection only after the monitor saw the handshake succeed. The monitor was attached
just after ``connect``, and libzmq's I/O thread could finish the handshake before it (a
loaded machine: 1 asyncio ``close()`` in 75 after a broker's SIGKILL waited 3 s, the
heartbeat silence rule, instead of returning at once). Here the handshake is made to
finish inside ``connect``, before the transport's next line, every time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from fastfanout.errors import PeerLost
from fastfanout.transport.sockets import AsyncDealerTransport, DealerTransport

DEADLINE = 10.0


@pytest.fixture
def router(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """A bare ROUTER on an ipc endpoint; while it is patched, a DEALER's ``connect``
    returns only once the handshake with it is done."""
    endpoint = f"ipc://{tmp_path}/router.sock"
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(endpoint)
    connect = zmq.Socket.connect

    def connect_and_handshake(sock: Any, address: str) -> Any:
        result = connect(sock, address)
        if address == endpoint:
            # a message flows only once the handshake succeeded (and its event is out)
            zmq.Socket.send(sock, b"probe")
            assert socket.poll(int(DEADLINE * 1000)), "the handshake never finished"
            socket.recv_multipart()
        return result

    monkeypatch.setattr(zmq.Socket, "connect", connect_and_handshake)
    try:
        yield endpoint, socket
    finally:
        socket.close(linger=0)
        context.term()


def test_the_blocking_dealer_sees_the_loss(router: tuple[str, Any],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, socket = router
    transport = DealerTransport(endpoint)
    monkeypatch.undo()
    try:
        socket.close(linger=0)   # the broker's end goes, as a killed broker's does
        deadline = time.monotonic() + DEADLINE
        with pytest.raises(PeerLost, match="was closed"):
            while time.monotonic() < deadline:
                transport.recv(0.1)
    finally:
        transport.close()


def test_the_asyncio_dealer_sees_the_loss(router: tuple[str, Any],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, socket = router

    async def main() -> PeerLost | None:
        transport = AsyncDealerTransport(endpoint)
        monkeypatch.undo()
        try:
            socket.close(linger=0)
            return await asyncio.wait_for(transport.lost(), DEADLINE)
        finally:
            transport.close()

    error = asyncio.run(main())
    assert isinstance(error, PeerLost) and "was closed" in str(error)
