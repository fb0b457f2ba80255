"""A durable copy keeps its receive times across a restart.

The journal recorded each delivery (a lease record) without its time, so after a
restart a copy received before it had no first or last receive time: the dead-letter
info it got later said its first receive was the first one after the restart. Lease
records now carry the receive time, and a copy copied forward by compaction carries
both times in its new enqueue record.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from clocks import FakeClock

from fastfanout import Broker
from fastfanout.storage import durability


def _queues(broker: Broker) -> None:
    broker.create_queue("dlq")
    broker.create_queue("q", visibility_timeout=1.0, max_receive_count=2,
                        dead_letter_queue="dlq")


def _dead_letter_after_a_second_receive(broker: Broker, clock: FakeClock) -> tuple[
        float, object]:
    """Receive the copy a second time, let that lease end: it is dead-lettered."""
    second = clock.now
    (again,) = broker.receive("q")
    assert again.receive_count == 2
    clock.advance(2.0)   # the lease ends; a third delivery would exceed max_receive_count
    assert broker.receive("q") == []
    (dead,) = broker.receive("dlq")
    return second, dead.dead_letter


def test_receive_times_survive_a_restart(tmp_path: Path) -> None:
    clock = FakeClock()
    with Broker(clock=clock, data_dir=tmp_path) as broker:
        _queues(broker)
        broker.send("q", b"x")
        clock.advance(3.0)
        first = clock.now
        (message,) = broker.receive("q")
        broker.nack(message.receipt)
        clock.advance(10.0)
    with Broker(clock=clock, data_dir=tmp_path) as broker:
        clock.advance(5.0)
        second, info = _dead_letter_after_a_second_receive(broker, clock)
    assert info.receive_count == 2                    # type: ignore[attr-defined]
    assert info.first_receive_time == first           # type: ignore[attr-defined]
    assert info.last_receive_time == second           # type: ignore[attr-defined]


def test_receive_times_survive_compaction_and_a_restart(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small segments: the received copy is copied forward (a new enqueue record) before
    the restart, its lease record's segment removed."""
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    clock = FakeClock()
    with Broker(clock=clock, data_dir=tmp_path, fsync="never") as broker:
        _queues(broker)
        broker.create_queue("filler")
        broker.send("q", b"x")
        first = clock.now
        (message,) = broker.receive("q")
        broker.nack(message.receipt)
        for i in range(300):   # many segments: the old ones are compacted
            broker.send("filler", f"filler {i}".encode() * 8)
            broker.ack_batch([m.receipt for m in broker.receive("filler")])
        storage = broker.stats().storage
        assert storage is not None and storage["copied_forward"] > 0
        assert storage["removed_segments"] > 0
    with Broker(clock=clock, data_dir=tmp_path) as broker:
        clock.advance(5.0)
        second, info = _dead_letter_after_a_second_receive(broker, clock)
    assert info.first_receive_time == first           # type: ignore[attr-defined]
    assert info.last_receive_time == second           # type: ignore[attr-defined]
