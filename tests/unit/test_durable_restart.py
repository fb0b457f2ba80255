"""Divergences of the durable broker's restart from docs/semantics.md, found by
tests/property/test_broker_restart_model.py, fixed in the core, kept as regression
tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from clocks import FakeClock

from fastfanout import Broker
from fastfanout.storage import durability


def test_a_redriven_copy_leaves_no_dedup_key_after_a_restart(tmp_path: Path) -> None:
    with Broker(data_dir=tmp_path) as broker:
        broker.create_queue("dlq")
        broker.create_queue("target", content_dedup=True)
        broker.send("dlq", b"same body")
        assert broker.redrive("dlq", to="target") == 1
        assert broker.stats().queues["target"].dedup_entries == 0
    with Broker(data_dir=tmp_path) as broker:
        assert broker.stats().queues["target"].dedup_entries == 0
        broker.ack_batch([m.receipt for m in broker.receive("target", max_messages=5)])
        assert not broker.send("target", b"same body").duplicate


def test_a_topic_keeps_every_dedup_key_across_a_restart(tmp_path: Path) -> None:
    """Found by the restart machine, fixed in the core: also the key of a publish that
    stored no durable copy (here: unrouted) survives a restart."""
    with Broker(data_dir=tmp_path) as broker:
        broker.create_topic("t")
        first = broker.publish("t", b"x", dedup_id="k")
    with Broker(data_dir=tmp_path) as broker:
        assert broker.stats().topics["t"].dedup_entries == 1
        again = broker.publish("t", b"x", dedup_id="k")
        assert again.duplicate and again.message_id == first.message_id


def test_a_recreated_queue_has_none_of_the_old_ones_dedup_keys(tmp_path: Path) -> None:
    with Broker(data_dir=tmp_path) as broker:
        broker.create_queue("q", content_dedup=True)
        broker.send("q", b"body")
        broker.delete_queue("q")
        broker.create_queue("q", content_dedup=True)
    with Broker(data_dir=tmp_path) as broker:
        assert broker.stats().queues["q"].dedup_entries == 0
        assert not broker.send("q", b"body").duplicate


def test_a_recreated_topic_has_none_of_the_old_ones_dedup_keys(tmp_path: Path) -> None:
    with Broker(data_dir=tmp_path) as broker:
        broker.create_topic("t", content_dedup=True)
        broker.publish("t", b"body")
        broker.delete_topic("t")
        broker.create_topic("t", content_dedup=True)
    with Broker(data_dir=tmp_path) as broker:
        assert broker.stats().topics["t"].dedup_entries == 0
        assert not broker.publish("t", b"body").duplicate


def test_a_dead_lettered_copy_leaves_no_dedup_key_after_a_restart(tmp_path: Path) -> None:
    """As for a redrive: dead-lettering moves a copy, it leaves no key in the dead-letter
    queue's window (live or after a restart)."""
    with Broker(data_dir=tmp_path) as broker:
        broker.create_queue("dlq", content_dedup=True)
        broker.create_queue("q", dead_letter_queue="dlq", max_receive_count=1)
        broker.send("q", b"same body")
        for message in broker.receive("q"):
            broker.nack(message.receipt)
        assert broker.receive("q") == []   # past max_receive_count: dead-lettered
        assert broker.stats().queues["dlq"].messages == 1
        assert broker.stats().queues["dlq"].dedup_entries == 0
    with Broker(data_dir=tmp_path) as broker:
        assert broker.stats().queues["dlq"].dedup_entries == 0
        assert not broker.send("dlq", b"same body").duplicate


def test_dedup_windows_are_rebuilt_exactly_across_segments(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Small segments (each begins with a snapshot, live copies are copied forward): a
    queue and a topic deleted and re-created in later segments start empty after a
    restart, and every key the live windows hold is kept."""
    monkeypatch.setattr(durability, "SEGMENT_BYTES", 4096)
    with Broker(data_dir=tmp_path, fsync="never") as broker:
        broker.create_topic("t", content_dedup=True)
        broker.create_queue("q", content_dedup=True)
        broker.subscribe("t", "q")
        broker.publish("t", b"old")
        for i in range(200):   # many segments
            broker.publish("t", f"filler {i}".encode() * 8)
            broker.ack_batch([m.receipt for m in broker.receive("q")])
        broker.delete_topic("t")
        broker.delete_queue("q")
        broker.create_topic("t", content_dedup=True)
        broker.create_queue("q", content_dedup=True)
        broker.subscribe("t", "q")
        kept = broker.publish("t", b"new")
        sent = broker.send("q", b"sent")
        for i in range(200):
            broker.send("q", f"more {i}".encode() * 8)
        entries = broker.stats().queues["q"].dedup_entries, broker.stats().topics["t"].dedup_entries
        assert broker.stats().storage["removed_segments"] > 0
    with Broker(data_dir=tmp_path) as broker:
        assert (broker.stats().queues["q"].dedup_entries,
                broker.stats().topics["t"].dedup_entries) == entries == (202, 1)
        assert not broker.publish("t", b"old").duplicate
        assert broker.publish("t", b"new").message_id == kept.message_id
        assert broker.send("q", b"sent").message_id == sent.message_id


@pytest.mark.parametrize("restarts_between", [0, 1])
def test_a_delayed_copy_whose_time_has_passed_comes_back_in_its_place(
        tmp_path: Path, restarts_between: int) -> None:
    """Found by the restart machine: whether a delayed message whose due time had passed
    came back before or behind a later one depended on whether a start had copied it
    forward (a copy-forward journals no due time that has passed). Now it comes back in
    entry order either way (docs/semantics.md, "Order and counters after a restart")."""
    clock = FakeClock()
    broker = Broker(clock=clock, data_dir=tmp_path, fsync="never")
    broker.create_queue("q")
    broker.send("q", b"delayed", delay=0.5)
    clock.advance(1.0)
    for _ in range(restarts_between):   # each start copies the old segment's copy forward
        broker.close()
        broker = Broker(clock=clock, data_dir=tmp_path, fsync="never")
    broker.send("q", b"later")
    broker.close()
    with Broker(clock=clock, data_dir=tmp_path, fsync="never") as broker:
        got = broker.receive("q", max_messages=5)
        assert [m.body for m in got] == [b"delayed", b"later"]


def test_a_delayed_copy_whose_time_is_ahead_waits_for_it_after_a_restart(
        tmp_path: Path) -> None:
    clock = FakeClock()
    with Broker(clock=clock, data_dir=tmp_path, fsync="never") as broker:
        broker.create_queue("q")
        broker.send("q", b"delayed", delay=2.0)
        broker.send("q", b"now")
    clock.advance(1.0)
    with Broker(clock=clock, data_dir=tmp_path, fsync="never") as broker:
        assert [m.body for m in broker.receive("q", max_messages=5)] == [b"now"]
        clock.advance(1.0)
        assert [m.body for m in broker.receive("q", max_messages=5)] == [b"delayed"]
