"""The native ``publish_nowait`` gate (ext/offers.pyx) on a sans-I/O core (issue 15)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fastfanout._ext.locks import FastRLock
from fastfanout._ext.offers import FutureMaker, NowaitGate, PendingBatch, bind_batch
from fastfanout.client.core import ConnectionCore
from fastfanout.errors import BrokenConnection
from fastfanout.wire.protocol import Opcode


class CountedCore(ConnectionCore):
    """A connection core counting the reads of its attributes the gate looks at."""

    reads = 0

    def __getattribute__(self, name: str) -> Any:
        if name in ("batches", "forked", "closed", "outbox"):
            CountedCore.reads += 1
        return super().__getattribute__(name)


class CountedConnection:
    """The blocking connection as the gate sees it (its lock and transport), counting
    the reads of them."""

    def __init__(self) -> None:
        self._lock = FastRLock()
        self._transport: object = object()
        self.reads = 0

    @property
    def lock(self) -> FastRLock:
        self.reads += 1
        return self._lock

    @lock.setter
    def lock(self, value: FastRLock) -> None:
        self._lock = value

    @property
    def transport(self) -> object:
        self.reads += 1
        return self._transport

    def ensure(self) -> None:
        """Connected already."""


def _listed(batch: PendingBatch, index: int) -> int:
    """A future maker: the index itself, listed in the batch's ``futures``."""
    batch.futures.append(index)
    return index


def _gate(batch_messages: int = 1000) -> tuple[ConnectionCore, NowaitGate, list[Any]]:
    """(core, gate, sent): ``sent`` gets each batch's futures as the core sends it."""
    sent: list[Any] = []
    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=batch_messages,
                          batch_bytes=1 << 20, bind=lambda batch, request: sent.append(
                              list(batch.futures)))
    gate = NowaitGate(core, _listed, core.outbox.clear, lambda: 1.0)
    return core, gate, sent


def test_appending_to_the_open_batch_reads_no_attribute_of_core_or_connection() -> None:
    CountedCore.reads = 0
    core = CountedCore("ipc://test", linger=0.002, batch_messages=1000, batch_bytes=1 << 20,
                       bind=lambda batch, request: None)
    connection = CountedConnection()
    gate = NowaitGate(core, _listed, core.outbox.clear, lambda: 1.0, connection)
    topic = "t"
    futures = [gate.enqueue(Opcode.PUBLISH, topic, b"x") for _ in range(100)]
    assert futures == list(range(100))
    # the core's batches, its state and the connection's lock and transport are looked
    # at when the batch is opened (the core's own enqueue included), not per call: each
    # call read five of them before
    assert CountedCore.reads <= 12 and connection.reads <= 3, (CountedCore.reads,
                                                               connection.reads)
    batch = core.batches[(Opcode.PUBLISH, "t")]
    assert len(batch.builder) == 100 and len(batch.futures) == 100 and not batch.left


def test_forget_drops_the_remembered_lock_and_batch() -> None:
    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=1000,
                          batch_bytes=1 << 20, bind=lambda batch, request: None)
    connection = CountedConnection()
    gate = NowaitGate(core, _listed, core.outbox.clear, lambda: 1.0, connection)
    gate.enqueue(Opcode.PUBLISH, "t", b"x")
    held = connection.lock
    held.acquire()   # as a thread of the parent may hold it at a fork
    connection.lock = FastRLock()   # a forked child's new lock...
    gate.forget()                   # ...and the gate told of it
    reads = connection.reads
    assert gate.enqueue(Opcode.PUBLISH, "t", b"y") == 1   # the new lock: no dead lock
    assert connection.reads > reads   # looked up again


def test_a_batch_sent_or_failed_between_calls_is_not_appended_to() -> None:
    core, gate, sent = _gate(batch_messages=3)
    for index in range(4):   # a full batch of 3 leaves, a new one opens
        gate.enqueue(Opcode.PUBLISH, "t", b"%d" % index)
    assert [len(futures) for futures in sent] == [3]
    core.flush_batches()   # another thread's flush: the open batch leaves
    assert [len(futures) for futures in sent] == [3, 1]
    gate.enqueue(Opcode.PUBLISH, "t", b"4")
    gate.enqueue(Opcode.SEND, "t", b"5")             # another target: its own batch
    gate.enqueue(Opcode.PUBLISH, "".join("t"), b"6")  # an equal name, another object
    assert sorted(len(batch.builder) for batch in core.batches.values()) == [1, 2]
    failed = core.batches[(Opcode.PUBLISH, "t")]
    core.broken(BrokenConnection("gone"))   # the session ended: its batches failed
    assert failed.left and [len(futures) for futures in sent][-2:] == [2, 1]
    gate.enqueue(Opcode.PUBLISH, "t", b"7")   # a new batch, not the failed one
    assert len(core.batches[(Opcode.PUBLISH, "t")].builder) == 1
    assert len(failed.builder) == 2
    gate.forget()
    gate.enqueue(Opcode.PUBLISH, "t", b"8")
    assert len(core.batches[(Opcode.PUBLISH, "t")].builder) == 2


def test_a_loop_of_publishes_does_not_run_the_cycle_collector() -> None:
    import gc


    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=2000,
                          batch_bytes=1 << 20, bind=lambda batch, request: None)
    gate = NowaitGate(core, FutureMaker(object()), core.outbox.clear, lambda: 1.0)
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.collect()
    gc.callbacks.append(count)
    try:
        for _ in range(50_000):   # the futures of a sent batch go with it (dropped here)
            gate.enqueue(Opcode.PUBLISH, "t", b"x")
    finally:
        gc.callbacks.remove(count)
    # a future per call, thousands alive: made from a free list, they do not count as
    # new objects towards a collection (those past a free list of 512 did: one
    # collection per batch of 2,000)
    assert len(collections) <= 5, collections


def test_batch_to_wait_is_the_oldest_unanswered_past_max_in_flight() -> None:
    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=2, batch_bytes=1 << 20,
                          bind=lambda batch, request: None, max_in_flight=2)
    gate = NowaitGate(core, _listed, core.outbox.clear, lambda: 1.0)
    for index in range(4):   # two batches sent
        gate.enqueue(Opcode.PUBLISH, "t", b"%d" % index)
    assert core.batch_to_wait() is None   # two in flight: within the limit
    for index in range(2):   # a third
        gate.enqueue(Opcode.PUBLISH, "t", b"%d" % index)
    first, second, third = core.batches_in_flight
    assert core.batch_to_wait() is first
    first.answer([b""])
    assert core.batch_to_wait() is None and list(core.batches_in_flight) == [second, third]
    for request in (second, third):   # answered ones are dropped as more leave
        request.answer([b""])
    gate.enqueue(Opcode.PUBLISH, "t", b"x")
    gate.enqueue(Opcode.PUBLISH, "t", b"y")
    assert len(core.batches_in_flight) == 1
    core.broken(BrokenConnection("gone"))   # its requests failed: nothing to wait for
    assert not core.batches_in_flight and core.batch_to_wait() is None


def test_without_max_in_flight_no_request_is_kept() -> None:
    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=1, batch_bytes=1 << 20,
                          bind=lambda batch, request: None)
    gate = NowaitGate(core, _listed, core.outbox.clear, lambda: 1.0)
    for _ in range(100):
        gate.enqueue(Opcode.PUBLISH, "t", b"x")
    assert not core.batches_in_flight and core.batch_to_wait() is None


def test_the_bound_calls_take_a_bare_body_in_c_and_options_to_the_methods() -> None:
    core, gate, _ = _gate()
    options: list[tuple[Any, ...]] = []
    gate.bind_face(Opcode.PUBLISH, Opcode.SEND,
                   lambda *args, **kwargs: options.append(("publish", args, kwargs)),
                   lambda *args, **kwargs: options.append(("send", args, kwargs)))
    publish_nowait, send_nowait = gate.calls()
    assert publish_nowait("t", b"a") == 0 and publish_nowait("t", b"b") == 1
    assert send_nowait("q", b"c") == 0
    assert len(core.batches[(Opcode.PUBLISH, "t")].builder) == 2
    assert len(core.batches[(Opcode.SEND, "q")].builder) == 1
    publish_nowait("t", b"d", ttl=5.0)   # an option: the client's Python method
    assert send_nowait("q", body=b"e") == 1   # a keyword, no option: the gate's method
    assert [(kind, args, kwargs["ttl"]) for kind, args, kwargs in options] == [
        ("publish", ("t", b"d"), 5.0)]
    with pytest.raises(TypeError):
        publish_nowait("t")
    with pytest.raises(TypeError):
        send_nowait("q", b"x", b"y")
    assert len(core.batches[(Opcode.PUBLISH, "t")].builder) == 2   # nothing appended


def test_a_kept_future_is_never_handed_out_again() -> None:
    """The gate hands a dropped future out again (``_recycled_future``); one its caller
    keeps is its own, with its own result, however many publishes follow."""

    class Driver:
        lock = threading.RLock()

        def flush(self) -> None:
            core.flush_batches()

        def publish_results(self, request: Any, timeout: float | None = None) -> list[int]:
            return [int(frame) for frame in request.value()]

    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=100,
                          batch_bytes=1 << 20, bind=bind_batch, max_in_flight=1000)
    gate = NowaitGate(core, FutureMaker(Driver()), core.outbox.clear, lambda: 1.0)
    kept: dict[int, Any] = {}
    handed: set[int] = set()
    for number in range(10_000):
        future = gate.enqueue(Opcode.PUBLISH, "t", b"x")
        handed.add(id(future))
        if number % 7 == 0:
            kept[number] = future
    assert not core.batches and len(core.batches_in_flight) == 100
    for sent, request in enumerate(core.batches_in_flight):
        request.answer([b"%d" % (sent * 100 + index) for index in range(100)])
    assert all(future.result() == number for number, future in kept.items())
    assert len({id(future) for future in kept.values()}) == len(kept)
    assert len(handed) < len(kept) + 100   # the dropped ones came round again
