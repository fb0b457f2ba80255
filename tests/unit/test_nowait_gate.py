"""The native ``publish_nowait`` gate (ext/offers.pyx) on a sans-I/O core (issue 15)."""

from __future__ import annotations

from typing import Any

import pytest

from fastfanout._ext.offers import NowaitGate
from fastfanout.client import core as core_module
from fastfanout.client.core import ConnectionCore, PendingBatch
from fastfanout.wire.protocol import Opcode


class CountedBatch(PendingBatch[Any]):
    """A pending batch counting the reads of its builder and futures."""

    __slots__ = ()
    reads = 0

    @property   # type: ignore[override]
    def builder(self) -> Any:
        CountedBatch.reads += 1
        return PendingBatch.builder.__get__(self)   # type: ignore[attr-defined]

    @builder.setter
    def builder(self, value: Any) -> None:
        PendingBatch.builder.__set__(self, value)   # type: ignore[attr-defined]

    @property   # type: ignore[override]
    def futures(self) -> Any:
        CountedBatch.reads += 1
        return PendingBatch.futures.__get__(self)   # type: ignore[attr-defined]

    @futures.setter
    def futures(self, value: Any) -> None:
        PendingBatch.futures.__set__(self, value)   # type: ignore[attr-defined]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> type[CountedBatch]:
    monkeypatch.setattr(core_module, "PendingBatch", CountedBatch)
    CountedBatch.reads = 0
    return CountedBatch


def _gate(batch_messages: int = 1000) -> tuple[ConnectionCore, NowaitGate, list[Any]]:
    """(core, gate, sent): ``sent`` gets each batch's futures as the core sends it."""
    sent: list[Any] = []
    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=batch_messages,
                          batch_bytes=1 << 20, bind=lambda futures, request: sent.append(
                              list(futures)))
    gate = NowaitGate(core, lambda index: index, core.outbox.clear, lambda: 1.0)
    return core, gate, sent


def test_appending_to_the_open_batch_reads_nothing_of_it(counted: type[CountedBatch]) -> None:
    core, gate, _ = _gate()
    topic = "t"
    futures = [gate.enqueue(Opcode.PUBLISH, topic, b"x") for _ in range(100)]
    assert futures == list(range(100))
    # the batch's builder and futures are looked up when it is opened, not per call
    assert counted.reads <= 4
    batch = core.batches[(Opcode.PUBLISH, "t")]
    assert len(batch.builder) == 100 and len(batch.futures) == 100


def test_a_batch_sent_or_replaced_between_calls_is_not_appended_to(
        counted: type[CountedBatch]) -> None:
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
    core.batches = {}   # replaced (a broken session): the next call opens a new batch
    gate.enqueue(Opcode.PUBLISH, "t", b"7")
    assert len(core.batches[(Opcode.PUBLISH, "t")].builder) == 1
    gate.forget()
    gate.enqueue(Opcode.PUBLISH, "t", b"8")
    assert len(core.batches[(Opcode.PUBLISH, "t")].builder) == 2


def test_a_loop_of_publishes_does_not_run_the_cycle_collector() -> None:
    import gc

    from fastfanout._ext.offers import FutureMaker

    core = ConnectionCore("ipc://test", linger=0.002, batch_messages=2000,
                          batch_bytes=1 << 20, bind=lambda futures, request: None)
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
