"""A call of one message names no place in a batch when it is refused, in every face.

Until 2026-12-07 the clients' single calls (and the command line's ``pub``) said
"entry 0: ..." for what the broker refused (a queue's ``max_message_size``, a FIFO
rule) and for the attributes they checked, where the embedded broker said nothing of an
entry; a batch names the entry it refuses in every face.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any
from typing import Any as Tracker

import pytest

import fastfanout
from fastfanout import aio

TOO_MANY = {str(n): n for n in range(11)}


def _setup(broker: Any) -> None:
    broker.create_queue("q", max_message_size=100)
    broker.create_queue("fifo", fifo=True)
    broker.create_topic("t")
    broker.subscribe("t", "q")


def _refusal(call: Callable[[], object]) -> tuple[str, str]:
    with pytest.raises(fastfanout.FastFanoutError) as raised:
        call()
    return type(raised.value).__name__, str(raised.value)


def _single_calls(broker: Any) -> list[tuple[str, str]]:
    return [_refusal(lambda: broker.send("q", b"x" * 101)),
            _refusal(lambda: broker.publish("t", b"x" * 101)),
            _refusal(lambda: broker.publish("t", b"x", attributes=TOO_MANY)),
            _refusal(lambda: broker.send("fifo", b"x")),
            _refusal(lambda: broker.send_batch("q", [b"x" * 101]))]


def test_single_calls_name_no_entry_in_every_face(track: Tracker) -> None:
    endpoint = track.endpoint()
    track.server(endpoint)
    with fastfanout.Broker() as broker:
        _setup(broker)
        embedded = _single_calls(broker)
        in_a_batch = _refusal(lambda: broker.send_batch("q", [b"x", b"x" * 101]))
    assert not any("entry" in text for _, text in embedded), embedded
    assert in_a_batch[1].startswith("entry 1: ")
    client = track.client(endpoint)
    _setup(client)
    assert _single_calls(client) == embedded
    assert _refusal(lambda: client.send_batch("q", [b"x", b"x" * 101])) == in_a_batch

    async def main() -> list[tuple[str, str]]:
        async with aio.connect(endpoint, timeout=5.0) as client:
            found = []
            for call in (lambda: client.send("q", b"x" * 101),
                         lambda: client.publish("t", b"x" * 101),
                         lambda: client.publish("t", b"x", attributes=TOO_MANY),
                         lambda: client.send("fifo", b"x"),
                         lambda: client.send_batch("q", [b"x" * 101])):
                with pytest.raises(fastfanout.FastFanoutError) as raised:
                    await call()
                found.append((type(raised.value).__name__, str(raised.value)))
            return found

    assert asyncio.run(main()) == embedded
