"""No broker at the endpoint: the error says that no broker answered the handshake."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from fastfanout import BrokenConnection, aio, connect

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
