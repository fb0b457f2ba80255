"""No broker at the endpoint: the error says that no broker answered the handshake."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import pytest

from fastfanout import BrokenConnection, InvalidArgument, Worker, aio, connect

PATIENT = 10.0   # a client's timeout past the heartbeats' 3 s of silence


def test_connecting_to_no_broker_says_the_handshake_went_unanswered(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    started = time.monotonic()
    with pytest.raises(BrokenConnection, match=r"no reply to the handshake \(HELLO\) from "
                       r"ipc://.*nobody\.sock within [0-9.]+ s; is a broker running there"):
        connect(endpoint, timeout=PATIENT, local_channel=False)
    assert time.monotonic() - started < PATIENT   # found by the silence, not the timeout


def test_the_asyncio_client_says_so_too(tmp_path: Path) -> None:
    endpoint = f"ipc://{tmp_path}/nobody.sock"

    async def main() -> None:
        with pytest.raises(BrokenConnection, match=r"handshake \(HELLO\)"):
            await aio.connect(endpoint, timeout=PATIENT, local_channel=False)

    asyncio.run(main())


@pytest.mark.parametrize(("endpoint", "problem"), [
    ("notanendpoint", "it must be ipc://PATH or tcp://HOST:PORT"),
    ("", "it must be ipc://PATH or tcp://HOST:PORT"),          # was the default endpoint
    ("inproc://x", "it must be ipc://PATH or tcp://HOST:PORT"),  # was 3 s, then no HELLO
    ("ipc://", "ipc:// needs a socket path"),
    ("tcp://127.0.0.1", "tcp:// needs HOST:PORT"),
    ("tcp://127.0.0.1:99999", "port '99999' is not a number from 1 to 65535"),
])
def test_a_malformed_endpoint_is_invalid_argument_before_anything_opens(
        endpoint: str, problem: str) -> None:
    # until 2026-12-05 connect() and Worker() took it: the connection then failed with
    # BrokenConnection ("Invalid argument (addr=...)"), some only after the handshake
    # timeout; the command line refused the same endpoints in one line
    started = time.monotonic()
    with pytest.raises(InvalidArgument, match=re.escape(problem)):
        connect(endpoint, timeout=PATIENT)

    async def main() -> None:
        with pytest.raises(InvalidArgument, match=re.escape(problem)):
            await aio.connect(endpoint, timeout=PATIENT)

    asyncio.run(main())
    with pytest.raises(InvalidArgument, match=re.escape(problem)):
        Worker(endpoint)
    with pytest.raises(InvalidArgument, match=re.escape(problem)):
        Worker().configure(endpoint=endpoint)
    assert time.monotonic() - started < 1.0   # nothing waited for a broker


def test_a_malformed_endpoint_from_the_environment_is_named_as_such(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FASTFANOUT_ENDPOINT", "inproc://x")
    with pytest.raises(InvalidArgument, match=re.escape(
            "endpoint='inproc://x' (from $FASTFANOUT_ENDPOINT): it must be ipc://PATH")):
        connect(timeout=PATIENT)


def test_a_brokers_stream_endpoint_is_named_as_such(track: Any) -> None:
    # the stream socket (PUB) never answers a HELLO: until 2026-12-06 the error only
    # asked whether a broker ran there (one does)
    server = track.server()
    stream = f"{server.endpoint}.stream"
    hint = rf"is the stream endpoint of a broker at {re.escape(server.endpoint)}: connect"
    with pytest.raises(BrokenConnection, match=hint):
        connect(stream, timeout=1.0, local_channel=False)

    async def main() -> None:
        with pytest.raises(BrokenConnection, match=hint):
            await aio.connect(stream, timeout=1.0, local_channel=False)

    asyncio.run(main())


def test_a_send_with_no_connection_to_queue_it_on_fails_within_its_timeout(
        track: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """libzmq ends a connection whose handshake failed for good (a DEALER at a PUB): a
    request sent after that has nowhere to go, and the send blocked for ever (a
    ``connect`` to a stream endpoint hung once, when the failure came before its HELLO
    left). It now waits ``send_timeout`` for room, then says so.

    Which way libzmq takes is a race: when the PUB closes the connection before the
    DEALER has read its READY, the DEALER sees a lost connection, not a refused one, and
    reconnects, keeping its queue (a CI run on a loaded machine queued ~25,000 requests in
    30 s that way). A small high-water mark makes that branch run out of room too, so
    the send must end with the same refusal either way."""
    import threading

    from fastfanout.errors import PeerLost
    from fastfanout.transport import sockets
    from fastfanout.transport.sockets import DealerTransport

    monkeypatch.setattr(sockets, "DEALER_HIGH_WATER_MARK", 16)
    server = track.server()
    transport = DealerTransport(f"{server.endpoint}.stream", send_timeout=0.5)
    outcome: list[BaseException] = []

    def send_until_refused() -> None:
        deadline = time.monotonic() + 30
        try:   # each queues on the connection being tried, until libzmq ends it
            while time.monotonic() < deadline:
                transport.send([b"", b"not a request"])
                time.sleep(0.001)
        except BaseException as error:   # anything else is kept for the assertion
            outcome.append(error)

    sender = threading.Thread(target=send_until_refused, daemon=True)
    sender.start()
    sender.join(40)
    try:
        assert not sender.is_alive(), "a send blocked past its timeout"
        assert len(outcome) == 1 and isinstance(outcome[0], PeerLost), outcome
        assert "took no request within 0.5 s" in str(outcome[0])
    finally:
        if not sender.is_alive():
            transport.close()
