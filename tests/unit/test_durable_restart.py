"""Divergences of the durable broker's restart from docs/semantics.md, found by
tests/property/test_broker_restart_model.py (reported to the core; xfail until fixed,
then kept as regression tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fastfanout import Broker


@pytest.mark.xfail(strict=True, reason="core bug: recovery remembers the dedup key of a "
                   "redriven (or dead-lettered) copy in its new queue's window, which the "
                   "live broker never did: a fresh message with that body is then refused "
                   "as a duplicate after a restart (a lost message)")
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


@pytest.mark.xfail(strict=True, reason="core bug: recovery files the dedup keys of a "
                   "deleted queue under its name, so a queue re-created with that name "
                   "gets them (with its own window) after a restart and refuses fresh "
                   "messages as duplicates (lost messages)")
def test_a_recreated_queue_has_none_of_the_old_ones_dedup_keys(tmp_path: Path) -> None:
    with Broker(data_dir=tmp_path) as broker:
        broker.create_queue("q", content_dedup=True)
        broker.send("q", b"body")
        broker.delete_queue("q")
        broker.create_queue("q", content_dedup=True)
    with Broker(data_dir=tmp_path) as broker:
        assert broker.stats().queues["q"].dedup_entries == 0
        assert not broker.send("q", b"body").duplicate


@pytest.mark.xfail(strict=True, reason="core bug: as for queues, a topic re-created with "
                   "a deleted one's name gets that one's dedup keys after a restart, and "
                   "refuses fresh publishes as duplicates")
def test_a_recreated_topic_has_none_of_the_old_ones_dedup_keys(tmp_path: Path) -> None:
    with Broker(data_dir=tmp_path) as broker:
        broker.create_topic("t", content_dedup=True)
        broker.publish("t", b"body")
        broker.delete_topic("t")
        broker.create_topic("t", content_dedup=True)
    with Broker(data_dir=tmp_path) as broker:
        assert broker.stats().topics["t"].dedup_entries == 0
        assert not broker.publish("t", b"body").duplicate
