"""Bodies: any C-contiguous buffer is a body, in every face; any other gets InvalidArgument.

The embedded broker, the blocking client and the asyncio client (and each one's producer)
take the same bodies and word the same refusal.
"""

from __future__ import annotations

import array
import asyncio
from typing import Any
from typing import Any as Tracker

import numpy as np
import pytest

import fastfanout
from fastfanout import aio
from fastfanout.model import ModelBroker

# every body as its flat bytes, in the exporter's memory order
GOOD_BODIES: list[Any] = [
    b"plain",
    bytearray(b"mutable"),
    memoryview(b"view"),
    array.array("d", [1.5, -2.0]),
    memoryview(array.array("i", [1, 2, 3])),              # a memoryview of format 'i'
    memoryview(array.array("q", [7])).cast("B"),
    np.arange(6, dtype=np.int16),
    np.arange(6, dtype=np.float32).reshape(2, 3),          # C-ordered 2-D
    np.zeros(0, dtype=np.uint8),                           # empty
    np.arange(10, dtype=np.int8)[2:7],                     # a contiguous slice
]
EXPECTED = [bytes(memoryview(body).cast("B")) if not isinstance(body, np.ndarray)
            else body.tobytes() for body in GOOD_BODIES]

NON_CONTIGUOUS: list[Any] = [
    np.arange(10, dtype=np.int64)[::2],                    # strided slice
    np.zeros((3, 3), order="F"),                           # Fortran order
    memoryview(b"abcdef")[::2],
]
# a call of one message names no entry (until 2026-12-07 "entry 0: ..." as in a batch)
CONTIGUOUS_FAULT = "a body must be a C-contiguous buffer"
NOT_A_BUFFER = "a body must be bytes-like"


def _setup_embedded(broker: fastfanout.Broker) -> None:
    broker.create_topic("t")
    broker.create_queue("q")
    broker.subscribe("t", "q")


def _refusals(publish: Any) -> list[str]:
    messages = []
    for body in [*NON_CONTIGUOUS, "text", 5]:
        with pytest.raises(fastfanout.InvalidArgument) as caught:
            publish(body)
        messages.append(str(caught.value))
    return messages


def _check_refusals(messages: list[str]) -> None:
    assert all(text.startswith(CONTIGUOUS_FAULT) for text in messages[:len(NON_CONTIGUOUS)])
    assert all(text.startswith(NOT_A_BUFFER) for text in messages[len(NON_CONTIGUOUS):])


def test_the_embedded_broker_takes_any_contiguous_buffer() -> None:
    with fastfanout.Broker() as broker:
        _setup_embedded(broker)
        for body in GOOD_BODIES:
            broker.publish("t", body)
        broker.publish_batch("t", GOOD_BODIES)
        broker.send_batch("q", [fastfanout.PublishEntry(body) for body in GOOD_BODIES])
        with broker.producer("t") as producer:
            for body in GOOD_BODIES:
                producer.offer(body)
        got = [m.body for m in broker.receive("q", max_messages=100)]
        assert got == EXPECTED * 4
        _check_refusals(_refusals(lambda body: broker.publish("t", body)))
        with pytest.raises(fastfanout.InvalidArgument, match="entry 1: a body must be a C-"):
            broker.publish_batch("t", [b"ok", NON_CONTIGUOUS[0]])
        with broker.producer("t") as producer:
            with pytest.raises(fastfanout.InvalidArgument, match=CONTIGUOUS_FAULT):
                producer.offer(NON_CONTIGUOUS[0])
        assert broker.stats().queues["q"].visible == 0   # nothing of a refused call


def test_the_reference_model_takes_and_refuses_the_same_bodies() -> None:
    model = ModelBroker()
    model.create_topic("t")
    model.create_queue("q")
    model.subscribe("t", "q")
    for body in GOOD_BODIES:
        model.publish("t", body)
    assert [m.body for m in model.receive("q", max_messages=100)] == EXPECTED
    for body in NON_CONTIGUOUS:
        with pytest.raises(fastfanout.InvalidArgument, match="C-contiguous"):
            model.publish("t", body)
    for body in ("text", 5):
        with pytest.raises(fastfanout.InvalidArgument, match="bytes-like"):
            model.publish("t", body)


def test_clients_take_and_refuse_the_bodies_the_broker_does(track: Tracker) -> None:
    server = track.server()
    client = track.client(server.endpoint)
    client.create_topic("t")
    client.create_queue("q")
    client.subscribe("t", "q")
    for body in GOOD_BODIES:
        client.publish("t", body)
    client.publish_batch("t", GOOD_BODIES)
    for body in GOOD_BODIES:
        client.publish_nowait("t", body)
    client.flush()
    with client.producer("t") as producer:
        for body in GOOD_BODIES:
            producer.offer(body)
    got = [m.body for m in client.receive("q", max_messages=100)]
    assert got == EXPECTED * 4

    with fastfanout.Broker() as broker:
        _setup_embedded(broker)
        embedded = _refusals(lambda body: broker.publish("t", body))
    _check_refusals(embedded)
    assert _refusals(lambda body: client.publish("t", body)) == embedded
    assert _refusals(lambda body: client.publish_nowait("t", body)) == embedded
    with client.producer("t") as producer:
        assert _refusals(producer.offer) == embedded
    with pytest.raises(fastfanout.InvalidArgument, match="entry 1: a body must be a C-"):
        client.publish_batch("t", [b"ok", NON_CONTIGUOUS[0]])

    async def main() -> None:
        async with aio.connect(server.endpoint, timeout=5.0) as aclient:
            for body in GOOD_BODIES:
                await aclient.publish("t", body)
            await aclient.publish_batch("t", GOOD_BODIES)
            async with aclient.producer("t") as producer:
                for body in GOOD_BODIES:
                    producer.offer(body)
            got = [m.body for m in await aclient.receive("q", max_messages=100)]
            assert got == EXPECTED * 3
            refused = []
            for body in [*NON_CONTIGUOUS, "text", 5]:
                with pytest.raises(fastfanout.InvalidArgument) as caught:
                    await aclient.publish("t", body)
                refused.append(str(caught.value))
            assert refused == embedded
            assert _refusals(lambda body: aclient.publish_nowait("t", body)) == embedded

    asyncio.run(main())


NO_BUFFER = [np.array(["2020-01-01"], dtype="datetime64[D]"),
             np.array([1, 2], dtype="timedelta64[s]")]
NO_BUFFER_FAULT = r"a body must be bytes-like; this ndarray exports no buffer \(cannot include"


def test_an_array_with_no_buffer_is_not_called_non_contiguous(track: Any) -> None:
    # until 2026-12 a datetime64 array (contiguous, but with no buffer export) was
    # refused as "a body must be a C-contiguous buffer; this ndarray is not"
    client = track.client(track.server().endpoint)
    client.create_queue("q")
    with fastfanout.Broker() as broker:
        _setup_embedded(broker)
        calls = [lambda b: broker.publish("t", b), lambda b: broker.send("q", b),
                 lambda b: client.send("q", b), lambda b: client.send_nowait("q", b)]
        batches = [lambda b: broker.publish_batch("t", [b"ok", b]),
                   lambda b: client.send_batch("q", [b"ok", b])]
        for body in NO_BUFFER:
            for call in calls:
                with pytest.raises(fastfanout.InvalidArgument,
                                   match=NO_BUFFER_FAULT + r".*\.view\('int64'\)"):
                    call(body)
            for batch in batches:
                with pytest.raises(fastfanout.InvalidArgument,
                                   match="^entry 1: " + NO_BUFFER_FAULT):
                    batch(body)
            with broker.producer("t") as producer, pytest.raises(
                    fastfanout.InvalidArgument, match=NO_BUFFER_FAULT):
                producer.offer(body)
            broker.send("q", body.view("int64"))   # what the message advises
        for body in NON_CONTIGUOUS:   # a buffer of another layout keeps its own words
            with pytest.raises(fastfanout.InvalidArgument, match=CONTIGUOUS_FAULT):
                broker.send("q", body)
        assert broker.stats().queues["q"].visible == len(NO_BUFFER)
    client.flush()
    assert client.stats().queues["q"].visible == 0
