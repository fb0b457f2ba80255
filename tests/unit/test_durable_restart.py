"""Divergences of the durable broker's restart from docs/semantics.md, found by
tests/property/test_broker_restart_model.py, fixed in the core, kept as regression
tests."""

from __future__ import annotations

from pathlib import Path

import pytest

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
