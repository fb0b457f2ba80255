"""A ``Server`` used out of order, or given an endpoint of the wrong form, raises a typed
error at once and leaves the running server as it was.

Until 2026-12-05 a second ``start()`` ran a second loop on the same sockets, which broke
the first with a ZMQError traceback ("Socket operation on non-socket") and a bad file
descriptor at its shutdown; a ``start()`` after ``stop()`` returned as if serving, and
served nothing; ``Server(5)`` raised an AttributeError from deep inside, ``Server("")``
served the default endpoint (``connect("")`` is refused) and ``Server("ipc://")`` was
made, to fail at bind.
"""

from __future__ import annotations

import pytest
from conftest import Tracker

import fastfanout
from fastfanout import Closed, InvalidArgument


def test_a_second_start_is_refused_and_the_server_serves_on(track: Tracker) -> None:
    server = track.server()
    with pytest.raises(InvalidArgument, match="started already"):
        server.start()
    with pytest.raises(InvalidArgument, match="started already"):
        server.serve_forever()
    client = track.client(server.endpoint)
    client.create_queue("q")
    client.send("q", b"after")
    assert [m.body for m in client.receive("q")] == [b"after"]


def test_a_start_after_stop_raises_closed(track: Tracker) -> None:
    server = track.server()
    server.stop()
    with pytest.raises(Closed, match="stopped"):
        server.start()
    with pytest.raises(Closed, match="stopped"):
        server.bind()
    server.stop()                                  # stopping again changes nothing


@pytest.mark.parametrize("endpoint", [5, b"ipc:///tmp/x.sock", "", "ipc://", "inproc://x",
                                      "tcp://127.0.0.1:99999"])
def test_an_endpoint_of_the_wrong_form_is_refused(endpoint: object, track: Tracker) -> None:
    with pytest.raises(InvalidArgument, match="endpoint="):
        fastfanout.Server(endpoint)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="stream_endpoint="):
        fastfanout.Server(track.endpoint(), stream_endpoint=endpoint)  # type: ignore[arg-type]


def test_a_closed_broker_is_refused(track: Tracker) -> None:
    # it was served: every call of every client then failed with "the broker is closed"
    broker = fastfanout.Broker()
    broker.close()
    with pytest.raises(Closed, match="broker= is closed"):
        fastfanout.Server(track.endpoint(), broker=broker)
